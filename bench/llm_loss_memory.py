"""Peak memory and time of the chunked LM distillation loss against the naive one.

Setting (the issue's): vocabulary 49,152, sequence 1,024, batch 4, hidden 576 (SmolLM2-135M's),
loss = 0.5 * forward KL(teacher || student) + 0.5 * cross-entropy over the target positions.

- naive: the student's logits for every position (hidden @ W.T, B x L x V), log-softmaxes over
  the full tensors, then the mask -- what a straightforward implementation does.
- chunked: the task's path -- target positions selected first, then
  ``chunked_weighted_loss`` fused with the output layer, chunks of the loss's default size
  (on CPU: 24 MiB of fp32 logits, 128 tokens at this vocabulary).

Each variant gets the teacher logits its pipeline produces (naive: all positions, B x L x V;
chunked: the target positions, N x V, from ``CausalLMTeacher``) and every position but the last
counts, the worst case for the chunked loss (selection saves nothing). Inputs are allocated
before measuring.

How memory is measured: each trial runs in a fresh subprocess; a thread samples the resident set
size (/proc/self/statm) every 0.5 ms during the loss's forward + backward; the peak minus the RSS
just before is the loss's own peak. glibc serves allocations above 32 MB with mmap and unmaps them
on free, so RSS follows every V-wide tensor (each is >= 200 MB here). Variants are interleaved
(naive, chunked, naive, chunked, ...) and the median is reported; the values and gradients of the
two are compared in the parent process.

    python bench/llm_loss_memory.py            # full size
    python bench/llm_loss_memory.py --quick    # batch 1, sequence 2048 (same code path)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SOFT, HARD = 0.5, 0.5


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    def __init__(self, interval: float = 0.0005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.base = _rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def inputs(batch: int, seq: int, vocab: int, hidden: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, seq, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * hidden**-0.5
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq - 1, dtype=torch.bool)
    return h, w, labels, mask


def trial(variant: str, batch: int, seq: int, vocab: int, hidden: int, chunk: int, out: str) -> None:
    """One measurement in this (fresh) process; writes figures and gradients to ``out``."""
    import torch.nn.functional as F

    from kdistill.losses.divergences import token_divergence
    from kdistill.losses.fused import TokenLossSpec, chunked_weighted_loss

    h, w, labels, mask = inputs(batch, seq, vocab, hidden)
    g = torch.Generator().manual_seed(1)
    teacher_w = torch.randn(vocab, hidden, generator=g) * hidden**-0.5
    h = h.requires_grad_(True)
    w = w.requires_grad_(True)
    targets = labels[:, 1:][mask]
    with torch.no_grad():
        if variant == "naive":  # the teacher's logits for every position
            teacher = h.detach() @ teacher_w.T
        else:  # the teacher's logits at the target positions only
            teacher = h.detach()[:, :-1][mask] @ teacher_w.T
    del teacher_w
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        if variant == "naive":
            logits = (h @ w.T)[:, :-1]
            div = token_divergence(logits, teacher[:, :-1])
            ce = F.cross_entropy(logits.reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                 reduction="none").view(batch, seq - 1)
            loss = ((SOFT * div + HARD * ce) * mask).sum()
        else:
            spec = TokenLossSpec(kind="forward_kl")
            loss, _, _ = chunked_weighted_loss(h[:, :-1][mask], teacher, targets, spec, soft_weight=SOFT,
                                               hard_weight=HARD, weight=w, chunk_size=chunk)
        loss.backward()
    seconds = time.perf_counter() - t0
    torch.save({"loss": loss.detach().double(), "grad_h": h.grad, "grad_w": w.grad,
                "peak_bytes": mem.peak - mem.base, "base_bytes": mem.base, "seconds": seconds,
                "input_bytes": sum(t.numel() * t.element_size() for t in (h, w, teacher))}, out)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 1, sequence 2048 (~1-2 minutes)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=None, help="tokens per chunk (default: the loss's own)")
    ap.add_argument("--trial", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--size", nargs=4, type=int, metavar=("B", "L", "V", "H"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        trial(args.trial[0], *args.size, args.chunk, args.trial[1])
        return
    batch, seq, vocab, hidden = (1, 2048, 49152, 576) if args.quick else (4, 1024, 49152, 576)
    from kdistill.losses.fused import default_chunk_tokens

    args.chunk = args.chunk or default_chunk_tokens(vocab)
    results: dict[str, list[dict]] = {"naive": [], "chunked": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for variant in ("naive", "chunked"):
                out = f"{tmp}/{variant}{r}.pt"
                subprocess.run([sys.executable, __file__, "--trial", variant, out, "--size", str(batch),
                                str(seq), str(vocab), str(hidden), "--chunk", str(args.chunk)], check=True)
                results[variant].append(torch.load(out, weights_only=True))
        naive, chunked = results["naive"][0], results["chunked"][0]
        max_rel_err = max(_rel(chunked["loss"], naive["loss"]), _rel(chunked["grad_h"][:, :-1], naive["grad_h"][:, :-1]),
                          _rel(chunked["grad_w"], naive["grad_w"]))
    med = {v: {k: statistics.median(float(x[k]) for x in rs) for k in ("peak_bytes", "seconds", "input_bytes")}
           for v, rs in results.items()}
    peak_ratio = med["chunked"]["peak_bytes"] / med["naive"]["peak_bytes"]
    total_ratio = ((med["chunked"]["peak_bytes"] + med["chunked"]["input_bytes"])
                   / (med["naive"]["peak_bytes"] + med["naive"]["input_bytes"]))
    full = batch * seq * vocab * 4
    print(f"LM distillation loss, B={batch} L={seq} V={vocab} H={hidden}, chunk {args.chunk} tokens "
          f"(one fp32 BxLxV tensor = {full / 2**20:.0f} MiB)")
    print(f"{'variant':<9}{'peak above inputs':>20}{'in BxLxV':>10}{'with inputs':>14}{'time fwd+bwd':>15}")
    for v in ("naive", "chunked"):
        m = med[v]
        print(f"{v:<9}{m['peak_bytes'] / 2**20:>16.0f} MiB{m['peak_bytes'] / full:>10.2f}"
              f"{(m['peak_bytes'] + m['input_bytes']) / 2**20:>10.0f} MiB{m['seconds']:>14.2f}s")
    print(f"peak_ratio (chunked / naive, above inputs) = {peak_ratio:.3f}  (target <= 0.25: "
          f"{'met' if peak_ratio <= 0.25 else 'MISSED'}); including inputs = {total_ratio:.3f}")
    print(f"max_rel_err (loss, grad wrt hidden, grad wrt W) = {max_rel_err:.2e}  (target <= 1e-5: "
          f"{'met' if max_rel_err <= 1e-5 else 'MISSED'})")
    print(f"time ratio chunked / naive = {med['chunked']['seconds'] / med['naive']['seconds']:.2f}")
    record = {
        "peak_ratio": peak_ratio, "max_rel_err": max_rel_err, "peak_ratio_including_inputs": total_ratio,
        "time_ratio": med["chunked"]["seconds"] / med["naive"]["seconds"],
        "median": med, "trials": {v: [{k: float(x[k]) for k in ("peak_bytes", "seconds", "input_bytes")}
                                      for x in rs] for v, rs in results.items()},
        "config": {"batch": batch, "seq": seq, "vocab": vocab, "hidden": hidden, "chunk": args.chunk,
                   "repeats": args.repeats, "quick": args.quick, "loss": "0.5 forward KL + 0.5 CE",
                   "method": "RSS sampled every 0.5 ms in a fresh subprocess per trial, minus RSS before"},
        "seeds": [0, 1],
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "load_average": os.getloadavg()},
    }
    out = ROOT / "bench" / "results" / ("llm_loss_memory_quick.json" if args.quick else "llm_loss_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
