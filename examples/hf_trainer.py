"""Token-level distillation with the Hugging Face Trainer: a tiny Llama teacher into a smaller one
(random weights, so it runs in seconds on CPU; use your trained teacher and your dataset)."""
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments, default_data_collator

from kdistill.integrations.hf import DistillationTrainer

size = dict(vocab_size=64, max_position_embeddings=32, num_attention_heads=2, num_key_value_heads=1)
torch.manual_seed(0)
teacher = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, **size))
student = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, **size))
ids = torch.randint(0, 64, (32, 16)).tolist()
train = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 16] * 32, "labels": ids})
args = TrainingArguments("hf-kd", max_steps=4, per_device_train_batch_size=8, learning_rate=3e-3,
                         logging_steps=2, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
trainer = DistillationTrainer(model=student, args=args, train_dataset=train, data_collator=default_data_collator,
                              teacher=teacher, loss={"divergence": "forward_kl", "temperature": 1.0})
trainer.train()  # each log line: loss, soft, temperature, soft_weight, hard_weight
print([entry for entry in trainer.state.log_history if "soft" in entry][-1])
