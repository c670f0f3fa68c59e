"""Tokenizers built in code for config-built causal LMs: one token per character of a fixed
alphabet, so a model that solves the reasoning tasks spends its time in the transformer rather
than in a 49k-row output layer. Saved with every model (``save_pretrained``), so a trained
folder loads back with ``AutoTokenizer``."""

from __future__ import annotations

import string

from kdistill.errors import ConfigError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
#: what the task families write (lower-case words, digits, arithmetic, line breaks); any other
#: character of a user's own JSONL reads as <unk>
CHARS = string.digits + string.ascii_lowercase + " \n+-*=:.,?()"
BUNDLED = {"chars": CHARS}


def char_tokenizer(alphabet: str = CHARS):
    """A ``PreTrainedTokenizerFast`` with the four special tokens (ids 0-3) then one token per
    character of ``alphabet``; decoding joins characters back with nothing between them."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet):
        raise ConfigError("a character alphabet must not repeat characters")
    vocab = {token: i for i, token in enumerate([*SPECIALS, *alphabet])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))  # no merges: one token per char
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK)


def bundled_tokenizer(name: str):
    """The tokenizer a config names in ``tokenizer:`` (e.g. ``chars``)."""
    if name not in BUNDLED:
        raise ConfigError(f"tokenizer: unknown tokenizer {name!r}; choose one of {', '.join(BUNDLED)}")
    return char_tokenizer(BUNDLED[name])
