"""Tiny random Hugging Face causal LMs and tokenizers built from config (no downloads)."""

import torch


def tiny_llama(vocab=50, seed=0, hidden=16, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def word_tokenizer(words=50, rename: dict[int, str] | None = None):
    """A word-level fast tokenizer with ``words`` tokens: <pad>, <s>, </s>, w3, w4, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(3, words)]
    for i, name in (rename or {}).items():
        names[i] = name
    tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def lm_blocks(n=4, seq_len=12, vocab=50, seed=0):
    """Prompt/completion examples of different lengths, right-padded: prompt and padding masked."""
    from kdistill.data.lm_text import blocks_from_pairs

    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for i in range(n):
        p_len = 2 + i % 3
        c_len = 3 + (2 * i) % 5
        prompts.append(torch.randint(3, vocab, (p_len,), generator=g).tolist())
        completions.append(torch.randint(3, vocab, (c_len,), generator=g).tolist())
    return blocks_from_pairs(prompts, completions, seq_len, pad_id=0)


def tiny_lm_config(tmp, **sections) -> dict:
    """A causal-LM run's raw config on tiny random text: a saved tiny Llama teacher (word
    tokenizer) and a 1-layer Llama student from config; ``sections`` add or replace top-level keys."""
    from kdistill.models.hf import save_hf

    teacher = save_hf(tiny_llama(vocab=56, seed=3), word_tokenizer(50), tmp / "teacher")
    text = tmp / "text.txt"
    g = torch.Generator().manual_seed(0)
    text.write_text(" ".join(f"w{int(i)}" for i in torch.randint(3, 50, (600,), generator=g)))
    return {"task": "causal_lm", "data": {"dataset": "text_files", "path": str(text), "seq_len": 16},
            "teacher": {"kind": "live", "model": {"arch": "hf_causal_lm", "source": str(teacher)}},
            "student": {"arch": "hf_causal_lm", "config": {
                "model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}},
            **sections}
