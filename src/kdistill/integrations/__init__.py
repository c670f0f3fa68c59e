"""kdistill inside other training frameworks: ``kdistill.integrations.hf.DistillationTrainer``
(a Hugging Face ``Trainer``). Each integration imports its framework only when imported."""
