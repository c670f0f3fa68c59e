"""Hugging Face models in and out, and the teacher/student vocabulary check."""

import pytest
import torch

from kdistill.config import HFCausalLMSpec
from kdistill.data.lm_text import LMBatches
from kdistill.errors import ModelError
from kdistill.models.hf import (check_vocabularies, load_causal_lm, load_tokenizer, output_rows,
                                resolve_source, save_hf, student_from_config)
from kdistill.tasks.causal_lm import CausalLMTask
from kdistill.teachers.causal_lm import CausalLMTeacher

from lm_helpers import lm_blocks, tiny_llama, word_tokenizer


def test_padded_vocabulary_is_accepted_and_sliced():
    tok = word_tokenizer(50)
    teacher = tiny_llama(vocab=64, seed=1)  # 14 padding rows, like 152064 vs 151936
    student = tiny_llama(vocab=50, seed=0)
    align = check_vocabularies(tok, tok, output_rows(teacher), output_rows(student))
    assert (align.size, align.sliced) == (50, True)
    b = next(iter(LMBatches(lm_blocks(n=3), 3)))
    t = CausalLMTeacher(teacher, align.size).logits(b)
    assert t.shape[-1] == 50
    torch.testing.assert_close(t, teacher(input_ids=b["input_ids"]).logits[:, :-1][b["labels"][:, 1:] != -100][:, :50])
    task = CausalLMTask(align.size)
    loss, _ = task.logit_loss(task.forward(student, b), t, b, temperature=1.0, soft_weight=1.0, hard_weight=0.0)
    assert torch.isfinite(loss)
    # the student may be the padded one too
    assert check_vocabularies(tok, tok, 50, 56).size == 50


def test_real_mismatch_is_refused_pointing_to_sequence_level():
    tok = word_tokenizer(50)
    with pytest.raises(ModelError, match="sequence-level"):  # same size, other tokens
        check_vocabularies(tok, word_tokenizer(50, rename={7: "other"}), 50, 50)
    with pytest.raises(ModelError, match="sequence-level"):  # more real tokens than the student has rows
        check_vocabularies(word_tokenizer(60), tok, 60, 50)
    with pytest.raises(ModelError, match="do not belong together"):
        check_vocabularies(word_tokenizer(60), None, 50, 50)


def test_student_from_config_uses_teacher_tokenizer_and_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = word_tokenizer(50)
    student = student_from_config({"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                                   "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "num_key_value_heads": 1}, tok, seed=0)
    assert output_rows(student) == 50 and student.config.eos_token_id == tok.eos_token_id
    folder = save_hf(student, tok, tmp_path / "student")
    assert (folder / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[1, 5, 9, 2]])
    torch.testing.assert_close(again(ids).logits, student(ids).logits)
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == tok.get_vocab()
    # a local folder is a source like a hub id
    spec = HFCausalLMSpec(source=str(folder))
    assert output_rows(load_causal_lm(spec)) == 50 and len(load_tokenizer(spec)) == 50


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="cannot load"):
        load_causal_lm(HFCausalLMSpec(source=str(tmp_path / "missing")))
    spec = HFCausalLMSpec(source="smollm2-135m-instruct")
    folder, gguf = resolve_source(spec)
    assert gguf.endswith(".gguf")
    with pytest.raises(ValueError, match="exactly one"):
        HFCausalLMSpec(source="x", config={"model_type": "llama"})
