"""DistillationTrainer with the real transformers.Trainer on tiny Llamas (CPU): two optimizer
steps with gradient accumulation end at the engine's weights, terms reach Trainer.log, HF
datasets + collators work, a teacher cache reads the kept ``index`` column; and (slow) the
bundled SmolLM2 teacher into a small Llama matches the engine's loss."""

import copy

import pytest
import torch

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
from transformers import DataCollatorForLanguageModeling, TrainingArguments, default_data_collator  # noqa: E402

from kdistill.config import LMLoss, RunConfig  # noqa: E402
from kdistill.data.lm_text import LMBatches  # noqa: E402
from kdistill.engine import Engine  # noqa: E402
from kdistill.integrations.hf import DistillationTrainer  # noqa: E402
from kdistill.losses.objectives import build_objective  # noqa: E402
from kdistill.tasks.causal_lm import CausalLMTask  # noqa: E402
from kdistill.teachers.causal_lm import CausalLMTeacher, TopKCacheTeacher  # noqa: E402

from lm_helpers import lm_blocks, tiny_llama, word_tokenizer  # noqa: E402

LOSS = {"temperature": {"kind": "linear", "start": 3.0, "end": 1.0}, "soft_weight": 0.8, "hard_weight": 0.2,
        "chunk_tokens": 7}


def _args(tmp_path, **over):
    base = dict(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=2, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
                max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                disable_tqdm=True, dataloader_num_workers=0, seed=0)
    return TrainingArguments(**{**base, **over})


def _dataset(blocks, index=False):
    columns = {"input_ids": blocks.input_ids.tolist(), "attention_mask": blocks.attention_mask.tolist(),
               "labels": blocks.labels.tolist()}
    if index:
        columns["index"] = list(range(len(blocks)))
    return datasets.Dataset.from_dict(columns)


def _engine_weights(student, teacher, blocks, steps=2, loss=LOSS):
    """kdistill's engine, one micro-batch of all blocks per step, SGD at lr 0.1."""
    cfg = RunConfig.parse({"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
                           "train": {"epochs": 1, "progress": False}})
    whole = next(iter(LMBatches(blocks, len(blocks))))
    spec = LMLoss(**loss)
    task = CausalLMTask(student.config.vocab_size, chunk_tokens=spec.chunk_tokens)
    engine = Engine(cfg, student, task, [whole] * steps, teacher=CausalLMTeacher(teacher, task.vocab_size),
                    objective=build_objective(spec))
    losses = [engine.train_step([whole], engine.hparams(step))["loss"] for step in range(steps)]
    return engine.student, losses


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_two_accumulated_steps_end_at_the_engines_weights(tmp_path):
    """4 prompt/completion examples, micro-batches of 2, 2 accumulated per step (any order):
    each step's loss is the sum over all target tokens / their count, as in the engine."""
    student, teacher, blocks = tiny_llama(seed=0), tiny_llama(seed=1), lm_blocks(n=4, seq_len=12)
    reference, engine_losses = _engine_weights(copy.deepcopy(student), teacher, blocks)
    trainer = DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=_dataset(blocks),
                                  data_collator=default_data_collator, teacher=teacher, loss=LOSS)
    trainer.train()
    torch.testing.assert_close(_flat(student), _flat(reference), rtol=1e-5, atol=1e-6)
    logged = [entry for entry in trainer.state.log_history if "soft" in entry]
    assert [entry["temperature"] for entry in logged] == [3.0, 1.0]  # schedules at global_step
    assert [entry["loss"] for entry in logged] == pytest.approx(engine_losses, rel=1e-5)
    assert all({"hard", "soft_weight", "hard_weight"} <= set(entry) for entry in logged)


def test_hf_datasets_and_collators_with_padding_and_evaluation(tmp_path):
    """Texts of different lengths through DataCollatorForLanguageModeling (labels -100 at
    padding); evaluation reports the distillation loss and its terms."""
    tok = word_tokenizer()
    texts = ["w3 w4 w5 w6 w7", "w8 w9 w10", "w11 w12 w13 w14 w15 w16 w17", "w18 w19 w20 w21"]
    ds = datasets.Dataset.from_dict({"text": texts}).map(lambda r: tok(r["text"]), remove_columns=["text"])
    trainer = DistillationTrainer(
        model=tiny_llama(seed=0), args=_args(tmp_path, gradient_accumulation_steps=1, max_steps=3),
        train_dataset=ds, eval_dataset=ds, data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        teacher=tiny_llama(seed=1), loss={"soft_weight": 1.0, "hard_weight": 0.5})
    before = _flat(trainer.model)
    trainer.train()
    assert not torch.equal(before, _flat(trainer.model))
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_soft", "eval_hard"} <= set(metrics)
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_soft"] + 0.5 * metrics["eval_hard"], rel=1e-5)


def test_a_teacher_cache_reads_the_index_column(tmp_path):
    student, teacher, blocks = tiny_llama(seed=0), tiny_llama(seed=1), lm_blocks(n=4, seq_len=12)
    cache = TopKCacheTeacher(CausalLMTeacher(teacher, 50), blocks, k=None)  # dense fp16 rows by index
    reference, _ = _engine_weights(copy.deepcopy(student), teacher, blocks, steps=1, loss={"chunk_tokens": 7})
    trainer = DistillationTrainer(model=student, args=_args(tmp_path, max_steps=1),
                                  train_dataset=_dataset(blocks, index=True), data_collator=default_data_collator,
                                  teacher=cache, loss={"chunk_tokens": 7})
    trainer.train()
    torch.testing.assert_close(_flat(student), _flat(reference), rtol=1e-3, atol=1e-5)  # fp16 cache


@pytest.mark.slow  # loads the bundled SmolLM2-135M GGUF teacher (4.5 min measured on 2 shared cores)
def test_smollm2_teacher_into_a_small_llama_matches_the_engine(tmp_path):
    from kdistill.config.models import HFCausalLMSpec
    from kdistill.data.lm_text import blocks_from_ids
    from kdistill.models.hf import load_causal_lm, load_tokenizer, output_rows, student_from_config

    spec = HFCausalLMSpec(arch="hf_causal_lm", source="smollm2-135m-instruct")
    tok, teacher = load_tokenizer(spec), load_causal_lm(spec)
    student = student_from_config({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                   "tie_word_embeddings": True}, tok, seed=0)
    assert output_rows(student) == output_rows(teacher)
    ids = torch.tensor(tok("To be, or not to be, that is the question: whether 'tis nobler in the mind "
                           "to suffer the slings and arrows of outrageous fortune, or to take arms against "
                           "a sea of troubles and by opposing end them")["input_ids"])
    blocks = blocks_from_ids(ids, 8).subset(slice(0, 4))
    assert len(blocks) == 4
    loss = {"temperature": 1.0, "soft_weight": 1.0, "hard_weight": 0.0}
    reference, engine_losses = _engine_weights(copy.deepcopy(student), teacher, blocks, loss=loss)
    trainer = DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=_dataset(blocks),
                                  data_collator=default_data_collator, teacher=teacher, loss=loss)
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "soft" in entry]
    assert logged == pytest.approx(engine_losses, rel=1e-5)
    torch.testing.assert_close(_flat(student), _flat(reference), rtol=1e-4, atol=1e-6)
