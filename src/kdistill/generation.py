"""Text from models: the teacher answering a prompt set (sequence-level distillation data) and the
student sampling its own continuations during training (on-policy distillation, GKD)."""

from __future__ import annotations

import json
import os
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
def generate_answers(model: nn.Module, tokenizer, prompts: list[str], output: Path, *,
                     max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
                     top_p: float = 1.0, batch_size: int = 8, chat_template: bool = True, seed: int = 0,
                     source: str = "", progress: bool = True, samples: int = 1) -> int:
    """Append the model's answers (``samples`` per prompt) to ``output`` (JSONL: id, sample,
    prompt as the model saw it, raw_prompt, completion) through ``append_answers``. A batch's
    sampling is seeded by (seed, its position), so a resumed run writes what an uninterrupted
    one would. Returns how many were new."""
    model.eval()

    def answer(batch: list[Job], start: int) -> Iterator[dict]:
        texts = [format_prompt(tokenizer, prompts[i], chat_template) for i, _ in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed * 1_000_003 + start)
        kw = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p, top_k=0)
        out = model.generate(**enc.to(model.device), **kw)
        for (i, j), text, row in zip(batch, texts, out[:, enc["input_ids"].shape[1]:]):
            yield {"id": i, "sample": j, "prompt": text, "raw_prompt": prompts[i],
                   "completion": tokenizer.decode(row, skip_special_tokens=True), "teacher": source,
                   "do_sample": do_sample}

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    try:
        return append_answers(output, generation_jobs(prompts, samples), answer, batch_size=batch_size,
                              progress=progress)
    finally:
        tokenizer.padding_side = side


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
