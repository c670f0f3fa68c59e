"""A teacher behind an OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp's server, TGI, a
hosted API): it answers prompts for sequence-level data (``kdistill generate``) and, where the
server returns top-n log-probabilities of an echoed prompt, gives token-level targets.

The client is the standard library's (no new dependency): bounded concurrency, a timeout per
request, retries with exponential backoff on 429 / 5xx / dropped connections, a request budget.
The API key is read from the environment variable the config names, when a request is made; it
is kept in no attribute, message or record.

Log-probabilities of given text (``/v1/completions`` with ``echo: true, logprobs: k``) come keyed
by token *text*, one entry per echoed token, the first one empty. Which token an entry predicts
differs between servers (vLLM: the distribution of token r itself; llama.cpp without a BOS: the
distribution of the token *after* r), so the offset is measured once on a probe text whose next
tokens are obvious; texts are mapped back to ids through the student's tokenizer once the
server's tokenizer is checked to be the same.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator

import torch

from kdistill.errors import ConfigError, KDistillError
from kdistill.losses.topk import TopKLogits
from kdistill.tasks.causal_lm import target_mask
from kdistill.teachers.base import TeacherSource

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 30.0
PROBE_TEXT = "Hello, world! Ça va? 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n\tdef f(x):\n    return x ** 2"
ALIGN_TEXT = "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24"
MISSING_LOGPROB = -30.0  # what the alignment probe scores a next token absent from an entry


class ServerError(KDistillError):
    """The teacher server failed, refused the key, or answered what cannot be used."""


class ServerClient:
    """POSTs JSON to ``base_url`` with the config's timeout, retries and request budget; safe to
    share between threads."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.requests = 0
        self._lock = threading.Lock()
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise ConfigError(f"teacher.api_key_env names ${cfg.api_key_env}, which is not set: export it")

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(self.cfg.api_key_env, '')}"
        return headers

    def _count(self, path: str) -> None:
        with self._lock:
            if self.cfg.max_requests is not None and self.requests >= self.cfg.max_requests:
                raise ServerError(f"teacher.max_requests ({self.cfg.max_requests}) spent before {path}: "
                                  "raise it and rerun (finished records are kept)")
            self.requests += 1

    def post(self, path: str, body: dict, *, missing_ok: bool = False) -> dict | None:
        """The decoded JSON answer; None for a 404 when ``missing_ok`` (an optional endpoint)."""
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode()
        for attempt in range(self.cfg.max_retries + 1):
            self._count(path)
            delay = min(self.cfg.backoff_s * 2**attempt, MAX_BACKOFF_S) * (0.5 + random.random() / 2)
            try:
                request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                status, detail = exc.code, _detail(exc)
                if status == 404 and missing_ok:
                    return None
                if status in (401, 403):
                    raise ServerError(f"{url}: HTTP {status}, the server refused the API key: set "
                                      f"${self.cfg.api_key_env or 'the variable teacher.api_key_env names'} "
                                      "to a valid key") from None
                if status not in RETRY_STATUS or attempt == self.cfg.max_retries:
                    raise ServerError(f"{url}: HTTP {status} {detail}".strip()) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.isdigit():
                    delay = min(float(retry_after), MAX_BACKOFF_S)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                if attempt == self.cfg.max_retries:
                    reason = getattr(exc, "reason", exc)
                    raise ServerError(f"{url}: no answer after {attempt + 1} tries ({reason}; timeout "
                                      f"{self.cfg.timeout_s} s): is the server up? rerun to continue") from None
            time.sleep(delay)
        raise AssertionError("unreachable")


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return " ".join(exc.read().decode(errors="replace").split())[:200]
    except Exception:  # a body that cannot be read adds nothing to the message
        return ""


def _sampling(g, seed: int) -> dict:
    body = {"max_tokens": g.max_new_tokens, "seed": seed}
    body.update({"temperature": g.temperature, "top_p": g.top_p} if g.do_sample else {"temperature": 0.0})
    return body


def answer_prompts(cfg, g, prompts: list[str], *, tokenizer=None, seed: int = 0, progress: bool = True) -> int:
    """``kdistill generate`` against the server: ``g.samples`` answers per prompt, ``cfg.concurrency``
    requests at once, written through generation.append_answers (resumable; a dead server loses
    only the requests in flight). Chat prompts (``g.chat_template``) go to /v1/chat/completions and
    are recorded in the student's chat template when it has one; others go to /v1/completions."""
    from kdistill.generation import append_answers, format_prompt, generation_jobs

    client = ServerClient(cfg)
    chat = g.chat_template
    jobs = generation_jobs(prompts, g.samples)
    position = {job: n for n, job in enumerate(jobs)}

    def one(job) -> dict:
        i, j = job
        body = {"model": cfg.model_name, **_sampling(g, seed * 1_000_003 + position[job]), **cfg.extra_body}
        if chat:
            body["messages"] = [{"role": "user", "content": prompts[i]}]
            choice = client.post("/v1/chat/completions", body)["choices"][0]
            completion = choice["message"]["content"] or ""
            shown = format_prompt(tokenizer, prompts[i], True) if tokenizer is not None else prompts[i]
        else:
            body["prompt"] = prompts[i]
            choice = client.post("/v1/completions", body)["choices"][0]
            completion, shown = choice["text"], prompts[i]
        return {"id": i, "sample": j, "prompt": shown, "raw_prompt": prompts[i], "completion": completion,
                "teacher": f"server:{cfg.model_name}", "do_sample": g.do_sample,
                "finish_reason": choice.get("finish_reason")}

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        def answer(batch, start) -> Iterator[dict]:
            futures = [pool.submit(one, job) for job in batch]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

        return append_answers(g.output, jobs, answer, batch_size=max(g.batch_size, cfg.concurrency),
                              progress=progress)


def server_tokenize(client: ServerClient, model: str, text: str) -> list[int] | None:
    """The server's token ids for ``text`` (llama.cpp's /extras/tokenize, else vLLM / SGLang's
    /tokenize), or None when it offers neither."""
    out = client.post("/extras/tokenize", {"model": model, "input": text}, missing_ok=True)
    if out is None:
        out = client.post("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False},
                          missing_ok=True)
    return None if out is None else [int(t) for t in out["tokens"]]


def check_tokenizer(client: ServerClient, model: str, tokenizer) -> str | None:
    """None when the server tokenizes the probe text as the student's tokenizer does (a BOS the
    server adds in front allowed), else why not, in a few words."""
    mine = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    theirs = server_tokenize(client, model, PROBE_TEXT)
    if theirs is None:
        return "the server has no tokenize endpoint (/extras/tokenize or /tokenize) to check it against"
    if theirs[:1] == [tokenizer.bos_token_id] and theirs[1:] == mine:
        return None
    if theirs != mine:
        at = next((n for n, (a, b) in enumerate(zip(theirs, mine)) if a != b), min(len(theirs), len(mine)))
        return (f"its tokenizer differs from the student's ({len(theirs)} vs {len(mine)} tokens for a "
                f"probe text, first difference at token {at})")
    return None


class TokenTexts:
    """Token id -> the text a server shows for it, and back for texts that name one token only
    (byte pieces of a multi-byte character print as nothing or U+FFFD and are left out)."""

    def __init__(self, tokenizer, vocab_size: int):
        anchor = tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
        base = tokenizer.decode(anchor)
        pieces = tokenizer.batch_decode([anchor + [i] for i in range(vocab_size)],
                                        clean_up_tokenization_spaces=False)
        self.text = [p[len(base):] if p.startswith(base) else p for p in pieces]
        owners: dict[str, list[int]] = {}
        for i, t in enumerate(self.text):
            owners.setdefault(t, []).append(i)
        self.id = {t: ids[0] for t, ids in owners.items() if len(ids) == 1 and t and "\ufffd" not in t}


class ServerTeacher(TeacherSource):
    """Top-k log-probabilities of each batch's target tokens from the server, as TopKLogits at
    T = 1 (the mass outside the top-k entries that map to a token id is the tail). Built only
    when the server's tokenizer is the student's."""

    def __init__(self, cfg, tokenizer, vocab_size: int):
        self.cfg, self.tokenizer, self.num_outputs = cfg, tokenizer, vocab_size
        self.client = ServerClient(cfg)
        why = check_tokenizer(self.client, cfg.model_name, tokenizer)
        if why is not None:
            raise ConfigError(f"teacher {cfg.model_name} at {cfg.base_url}: {why}; only sequence-level "
                              "distillation works with it (kdistill generate, then loss.soft_weight: 0)")
        self.texts = TokenTexts(tokenizer, vocab_size)
        self.bos = tokenizer.bos_token_id
        self.offset = self._measure_offset()

    def _entries(self, ids: list[int]) -> tuple[list[dict | None], int]:
        """The server's top-k entries for ``ids`` echoed, by token position (None where it gives
        none; one more at the end for the generated token), and 1 where llama.cpp dropped a
        leading BOS (its entries then hold the distribution *of* their token)."""
        text = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        body = {"model": self.cfg.model_name, "prompt": text, "echo": True, "logprobs": self.cfg.top_k,
                "max_tokens": 1, "temperature": 0.0, **self.cfg.extra_body}
        lp = self.client.post("/v1/completions", body)["choices"][0]["logprobs"]
        tokens, top = lp["tokens"], lp["top_logprobs"]
        # every id echoed, or llama.cpp's: a leading BOS dropped, and the other BOS ids left out
        candidates = [list(range(len(ids))), [r for r, t in enumerate(ids) if t != self.bos]]
        kept = next((c for c in candidates if len(tokens) - len(c) in (0, 1)
                     and not any(self._differs(tokens[e], ids[r]) for e, r in enumerate(c))), None)
        if kept is None:
            raise ServerError(f"{self.cfg.base_url} echoed other tokens than the batch's for a text of "
                              f"{len(ids)} tokens (it retokenizes differently): score token blocks "
                              "(data.dataset: text) or use sequence-level distillation")
        out: list[dict | None] = [None] * (len(ids) + 1)
        for e, r in enumerate(kept):
            out[r] = top[e]
        if len(tokens) > len(kept):  # the generated token's entry
            out[len(ids)] = top[len(kept)]
        return out, int(ids[0] == self.bos and kept[:1] != [0])

    def _differs(self, shown: str, token: int) -> bool:
        mine = self.texts.text[token] if token < len(self.texts.text) else None
        return bool(shown) and mine is not None and "\ufffd" not in mine and shown != mine

    def _after_prefix(self, ids: list[int]) -> dict:
        """The distribution of the token after ``ids``: the entry of one generated token (BOS and
        EOS biased away: llama.cpp gives no entry for either; the entry's log-probabilities are
        the model's own, before the bias)."""
        text = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        bias = {str(t): -100.0 for t in (self.bos, self.tokenizer.eos_token_id) if t is not None}
        body = {"model": self.cfg.model_name, "prompt": text, "logprobs": self.cfg.top_k, "max_tokens": 1,
                "temperature": 0.0, "logit_bias": bias, **self.cfg.extra_body}
        top = self.client.post("/v1/completions", body)["choices"][0]["logprobs"]["top_logprobs"]
        if not top or not top[0]:
            raise ServerError(f"{self.cfg.base_url} gave no log-probabilities for the token after a prefix "
                              f"of {len(ids)} tokens")
        return top[0]

    def _measure_offset(self) -> int:
        """Whether entry p + 0 or p + 1 holds the distribution of token p + 1 on this server: the
        one under which a counting sequence's next numbers are likely."""
        ids = self.tokenizer(ALIGN_TEXT, add_special_tokens=False)["input_ids"]
        entries, _ = self._entries(ids)
        scores = {}
        for shift in (0, 1):
            got = [(entries[p + shift] or {}).get(self.texts.text[ids[p + 1]], MISSING_LOGPROB)
                   for p in range(len(ids) // 2, len(ids) - 1)]
            scores[shift] = sum(got) / len(got)
        best = max(scores, key=scores.get)
        if scores[best] < -2.0:
            raise ServerError(f"{self.cfg.base_url}: the echoed log-probabilities predict no counting "
                              f"sequence under either alignment ({scores}): the server's logprobs are unusable")
        return best

    def _row(self, ids: list[int], positions: list[int]) -> list[dict]:
        entries, dropped_bos = self._entries(ids)
        offset = self.offset + dropped_bos
        rows = []
        for p in positions:
            entry = entries[p + offset] if p + offset < len(entries) else None
            rows.append(entry if entry else self._after_prefix(ids[: p + 1]))
        return rows

    def logits(self, batch: dict) -> TopKLogits:
        mask = target_mask(batch)
        jobs = []
        for b in range(batch["input_ids"].shape[0]):
            positions = mask[b].nonzero().flatten().tolist()
            if positions:
                n = int(batch["attention_mask"][b].sum())
                jobs.append((batch["input_ids"][b, :n].tolist(), positions))
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            rows = [entry for got in pool.map(lambda job: self._row(*job), jobs) for entry in got]
        mapped = []
        for entry in rows:
            pairs = sorted(((lp, self.texts.id[t]) for t, lp in entry.items()
                            if t in self.texts.id and self.texts.id[t] < self.num_outputs), reverse=True)
            mapped.append(pairs[: self.cfg.top_k])
        k = min(len(pairs) for pairs in mapped)
        if k == 0:
            raise ServerError(f"{self.cfg.base_url}: a token's top-{self.cfg.top_k} entries name no token "
                              "of the student's vocabulary")
        values = torch.tensor([[lp for lp, _ in pairs[:k]] for pairs in mapped], dtype=torch.float32)
        indices = torch.tensor([[i for _, i in pairs[:k]] for pairs in mapped], dtype=torch.long)
        kept = torch.logsumexp(values.double(), -1).clamp(max=0)
        log_tail = torch.log(-torch.expm1(kept)).float()  # -inf when the top-k hold all the mass
        return TopKLogits(values, indices, log_tail, self.num_outputs)

    def describe(self) -> dict:
        return {"kind": "server", "base_url": self.cfg.base_url, "model": self.cfg.model_name,
                "top_k": self.cfg.top_k, "entry_offset": self.offset}
