"""kdistill: knowledge distillation, proved."""
