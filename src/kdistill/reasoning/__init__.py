"""Reasoning distillation (DeepSeek-R1's recipe, measured by exact match): verifiable task
families with worked solutions, answer checkers, a character tokenizer that fits them, and
generation-based evaluation. Rejection-sampled traces are ``kdistill.generation.sample_traces``."""
