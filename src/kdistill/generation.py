"""Text from models: the teacher answering a prompt set (sequence-level distillation data) and the
student sampling its own continuations during training (on-policy distillation, GKD)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from kdistill.checkpoint import atomic_write_text
from kdistill.data.lm_text import IGNORE, blocks_from_pairs, read_jsonl
from kdistill.errors import ConfigError, DataError


def read_prompts(path: Path, field: str = "prompt") -> list[str]:
    """Prompts from JSONL (``field`` of each record) or a text file (one prompt per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"generate.prompts {path} does not exist")
    if path.suffix == ".jsonl":
        return [str(r[field]) for r in read_jsonl(path, (field,))]
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"generate.prompts {path} holds no prompts")
    return prompts


def format_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    """The text the teacher sees: the chat template's user turn and assistant header if asked
    for and available, else the prompt as it is."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def _done_jobs(path: Path) -> set[tuple[int, int]]:
    """(prompt id, sample) pairs already answered in ``path`` (a record without ``sample`` is
    sample 0); a record cut by an interruption is dropped from the file (it is answered again)."""
    if not path.is_file():
        return set()
    done, kept = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            done.add((int(record["id"]), int(record.get("sample", 0))))
            kept.append(line)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return done


def _done_ids(path: Path) -> set[int]:
    """Prompt ids with a record in ``path`` (torn records dropped, as ``_done_jobs`` does)."""
    return {i for i, _ in _done_jobs(path)}


@contextlib.contextmanager
def left_padding(tokenizer):
    """Generation continues from the right end of every row: pad prompts on the left."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def completion_length(row: list[int], eos_id: int | None) -> int:
    """Generated tokens of one row: up to and including the first eos, else all of them."""
    return row.index(eos_id) + 1 if eos_id is not None and eos_id in row else len(row)


Job = tuple[int, int]  # (prompt id, sample number)


def append_answers(output: Path, jobs: list[Job], answer: Callable[[list[Job], int], Iterable[dict]], *,
                   batch_size: int, progress: bool = True) -> int:
    """The resumable JSONL writer every teacher shares: ``jobs`` are cut into batches fixed by
    position, batches already answered in ``output`` are skipped, and ``answer(batch, position)``
    yields one record per job (with ``id`` and ``sample``), in any order; each record is written
    as it comes, every batch flushed and fsynced, so an interruption (a killed process, a dead
    server) loses only unfinished records and a rerun answers exactly those. Returns how many
    records were new."""
    from tqdm.auto import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _done_jobs(output)
    batches = [(s, jobs[s: s + batch_size]) for s in range(0, len(jobs), batch_size)]
    batches = [(s, b) for s, b in batches if not set(b) <= done]
    written = 0
    with open(output, "a", encoding="utf-8") as fh:
        try:
            for start, batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
                for record in answer(batch, start):
                    if (record["id"], record["sample"]) in done:
                        continue
                    fh.write(json.dumps(record) + "\n")
                    fh.flush()  # on the OS's side at once: a killed process keeps it
                    done.add((record["id"], record["sample"]))
                    written += 1
                os.fsync(fh.fileno())
        finally:
            fh.flush()
            os.fsync(fh.fileno())
    return written


def generation_jobs(prompts: list[str], samples: int = 1) -> list[Job]:
    return [(i, j) for i in range(len(prompts)) for j in range(samples)]


@torch.no_grad()
def sample_completions(model: nn.Module, tokenizer, texts: list[str], *, samples: int = 1,
                       do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                       max_new_tokens: int = 128, seed: int = 0) -> list[list[tuple[str, int]]]:
    """``samples`` completions of each text as (decoded text, generated tokens), sampled under
    ``torch.manual_seed(seed)`` (greedy when not ``do_sample``). The tokenizer must pad left."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    kw = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
          "num_return_sequences": samples}
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p, top_k=0)
    was_training = model.training
    model.eval()
    out = model.generate(**enc.to(model.device), **kw)
    model.train(was_training)
    rows = out[:, enc["input_ids"].shape[1]:].tolist()
    decoded = [(tokenizer.decode(row, skip_special_tokens=True), completion_length(row, tokenizer.eos_token_id))
               for row in rows]
    return [decoded[i * samples:(i + 1) * samples] for i in range(len(texts))]


def prompt_batches(count: int, batch_size: int, done: set[int]) -> list[list[int]]:
    """Batches fixed by prompt position (so a resumed run samples exactly the same batches), less
    those already done."""
    batches = [list(range(s, min(s + batch_size, count))) for s in range(0, count, batch_size)]
    return [ids for ids in batches if not set(ids) <= done]


def batch_seed(seed: int, ids: list[int]) -> int:
    return seed * 1_000_003 + ids[0]


def generate_answers(model: nn.Module, tokenizer, prompts: list[str], output: Path, *,
                     max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
                     top_p: float = 1.0, batch_size: int = 8, chat_template: bool = True, seed: int = 0,
                     source: str = "", progress: bool = True) -> int:
    """Append the model's answer to each prompt to ``output`` (JSONL: id, sample, prompt as the
    model saw it, raw_prompt, completion) through ``append_answers``, the resumable writer every
    teacher shares. Batch b's sampling is seeded by (seed, b) and batches are fixed by prompt
    position, so a resumed run writes what an uninterrupted one would. Returns how many were new."""

    def answer(batch: list[Job], start: int) -> Iterator[dict]:
        ids = [i for i, _ in batch]
        texts = [format_prompt(tokenizer, prompts[i], chat_template) for i in ids]
        answers = sample_completions(model, tokenizer, texts, do_sample=do_sample, temperature=temperature,
                                     top_p=top_p, max_new_tokens=max_new_tokens, seed=batch_seed(seed, ids))
        for (i, j), text, ((completion, _),) in zip(batch, texts, answers):
            yield {"id": i, "sample": j, "prompt": text, "raw_prompt": prompts[i], "completion": completion,
                   "teacher": source, "do_sample": do_sample}

    with left_padding(tokenizer):
        return append_answers(output, generation_jobs(prompts), answer, batch_size=batch_size, progress=progress)


KEEP = ("all", "first_correct", "all_correct", "shortest_correct")


def kept_samples(correct: list[bool], lengths: list[int], keep: str) -> list[int]:
    """Which of one prompt's samples are written: every one (``all``, the unfiltered control),
    or of those the checker accepts the first, every one, or the shortest (the first on ties)."""
    if keep == "all":
        return list(range(len(correct)))
    accepted = [j for j, ok in enumerate(correct) if ok]
    if keep == "all_correct" or not accepted:
        return accepted
    if keep == "first_correct":
        return accepted[:1]
    if keep == "shortest_correct":
        return [min(accepted, key=lambda j: (lengths[j], j))]
    raise ConfigError(f"generate.keep must be one of {', '.join(KEEP)}, got {keep!r}")


def sidecar(output: Path, what: str) -> Path:
    """OUT.jsonl's per-prompt stats (``stats``, .stats.jsonl) and totals (``summary``, .summary.json)."""
    return output.with_name(output.stem + (".stats.jsonl" if what == "stats" else ".summary.json"))


def _resume_traces(output: Path, stats: Path, settings: str) -> set[int]:
    """Prompts finished by an earlier run (their stats line was written after their traces);
    traces of an unfinished prompt are dropped, so they are not written twice."""
    done = _done_ids(stats)
    for line in stats.read_text(encoding="utf-8").splitlines() if stats.is_file() else ():
        if json.loads(line).get("settings") != settings:
            raise ConfigError(f"{output} was sampled with other generate settings: delete it and "
                              f"{stats.name}, or set another generate.output")
    if output.is_file():
        kept = [line for line in output.read_text(encoding="utf-8").splitlines()
                if _record_id(line) in done]
        atomic_write_text(output, "".join(line + "\n" for line in kept))
    return done


def _record_id(line: str) -> int | None:
    try:
        return int(json.loads(line)["id"])
    except (json.JSONDecodeError, KeyError, ValueError, TypeError):
        return None


def sample_traces(model: nn.Module, tokenizer, records: list[dict], output: Path, *, checker,
                  samples: int = 4, keep: str = "first_correct", max_new_tokens: int = 128,
                  do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                  batch_size: int = 8, chat_template: bool = True, seed: int = 0, source: str = "",
                  progress: bool = True) -> dict:
    """Rejection sampling: ``samples`` answers per problem record ({prompt, answer, ...}), each
    checked by ``checker``; the ``keep`` ones are written to ``output`` (JSONL: id, sample, prompt,
    completion, correct, tokens), and each prompt's pass rate to OUT.stats.jsonl after its
    traces, so an interrupted run resumes where it stopped and writes what an uninterrupted one
    would (batch sampling is seeded by (seed, batch)). Returns the totals, also in OUT.summary.json:
    samples drawn, accepted, kept, prompts solved, mean pass rate, CPU seconds."""
    from tqdm.auto import tqdm

    if keep not in KEEP:
        raise ConfigError(f"generate.keep must be one of {', '.join(KEEP)}, got {keep!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stats_path = sidecar(output, "stats")
    settings = json.dumps({"samples": samples, "keep": keep, "max_new_tokens": max_new_tokens,
                           "do_sample": do_sample, "temperature": temperature, "top_p": top_p,
                           "batch_size": batch_size, "seed": seed, "source": source, "checker": repr(checker)},
                          sort_keys=True)
    done = _resume_traces(output, stats_path, settings)
    with left_padding(tokenizer), open(output, "a", encoding="utf-8") as traces, \
            open(stats_path, "a", encoding="utf-8") as stats:
        for ids in tqdm(prompt_batches(len(records), batch_size, done), desc="sample traces",
                        disable=not progress, leave=False):
            cpu = time.process_time()
            texts = [format_prompt(tokenizer, records[i]["prompt"], chat_template) for i in ids]
            answers = sample_completions(model, tokenizer, texts, samples=samples, do_sample=do_sample,
                                         temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                         seed=batch_seed(seed, ids))
            seconds = (time.process_time() - cpu) / len(ids)
            lines, stat_lines = [], []
            for i, text, drawn in zip(ids, texts, answers):
                if i in done:
                    continue
                correct = [checker.accepts(records[i], completion) for completion, _ in drawn]
                chosen = kept_samples(correct, [n for _, n in drawn], keep)
                for j in chosen:
                    lines.append({"id": i, "task_id": records[i].get("id"), "sample": j, "prompt": text,
                                  "raw_prompt": records[i]["prompt"], "completion": drawn[j][0],
                                  "answer": records[i]["answer"], "correct": correct[j], "tokens": drawn[j][1],
                                  "teacher": source})
                stat_lines.append({"id": i, "samples": samples, "correct": sum(correct),
                                   "pass_rate": sum(correct) / samples, "kept": len(chosen),
                                   "cpu_seconds": seconds, "settings": settings})
            for fh, rows in ((traces, lines), (stats, stat_lines)):  # traces first: stats mark a prompt done
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
                fh.flush()
                os.fsync(fh.fileno())
    summary = trace_summary(stats_path)
    atomic_write_text(sidecar(output, "summary"), json.dumps({**summary, "settings": json.loads(settings)}, indent=2))
    return summary


def trace_summary(stats: Path) -> dict:
    """Totals of a rejection-sampling run from its per-prompt stats."""
    rows = [json.loads(line) for line in Path(stats).read_text(encoding="utf-8").splitlines()]
    n = max(len(rows), 1)
    return {"prompts": len(rows), "samples_drawn": sum(r["samples"] for r in rows),
            "accepted": sum(r["correct"] for r in rows), "kept": sum(r["kept"] for r in rows),
            "prompts_solved": sum(r["correct"] > 0 for r in rows),
            "mean_pass_rate": sum(r["pass_rate"] for r in rows) / n,
            "cpu_seconds": sum(r["cpu_seconds"] for r in rows)}


class OnPolicyBatches:
    """Wraps prompt/completion batches: with probability ``fraction`` (GKD's lambda) a batch's
    completions are replaced by the student's own samples (from the current weights), which the
    teacher then scores like any batch. The draws depend only on (seed, epoch)."""

    def __init__(self, batches, student: nn.Module, *, fraction: float, max_new_tokens: int,
                 pad_id: int, eos_id: int | None, seed: int = 0):
        if not 0 <= fraction <= 1:
            raise ConfigError(f"loss.on_policy_fraction must be in [0, 1], got {fraction}")
        self.batches, self.student, self.fraction = batches, student, fraction
        self.max_new_tokens, self.pad_id, self.eos_id, self.seed = max_new_tokens, pad_id, eos_id, seed
        self.epoch = 0
        self.sampled = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        gen = torch.Generator().manual_seed(self.seed * 9_000_011 + self.epoch)
        for n, batch in enumerate(self.batches):
            if float(torch.rand((), generator=gen)) < self.fraction:
                batch = self.sample(batch, seed=self.seed * 1_000_003 + self.epoch * 100_003 + n)
                self.sampled += 1
            yield batch

    @torch.no_grad()
    def sample(self, batch: dict, seed: int) -> dict:
        prompts = []
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            targets = (labels != IGNORE).nonzero().flatten()
            end = int(targets[0]) if len(targets) else int(mask.sum())
            prompts.append(ids[: max(end, 1)].tolist())
        width = max(len(p) for p in prompts)
        x = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(x)
        for i, p in enumerate(prompts):  # left padding for generation
            x[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        was_training = self.student.training
        self.student.eval()
        torch.manual_seed(seed)
        device = next(self.student.parameters()).device
        out = self.student.generate(input_ids=x.to(device), attention_mask=attn.to(device), do_sample=True,
                                    top_k=0, max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id)
        self.student.train(was_training)
        completions = []
        for row in out[:, width:].tolist():
            if self.eos_id is not None and self.eos_id in row:
                row = row[: row.index(self.eos_id) + 1]
            completions.append(row or [self.eos_id if self.eos_id is not None else self.pad_id])
        seq_len = batch["input_ids"].shape[1]
        blocks = blocks_from_pairs(prompts, completions, seq_len, self.pad_id)
        return {"input_ids": blocks.input_ids, "attention_mask": blocks.attention_mask,
                "labels": blocks.labels, "index": batch["index"]}
