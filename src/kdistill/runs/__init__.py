"""Runs: config -> data -> teacher source -> engine -> saved model -> comparison, for every task.

``train`` fits a model on hard labels alone (a teacher, or the student-from-scratch baseline);
``distill`` fits the student towards the config's method with the teacher; ``run_comparison``
gives the proof. What differs per task is a recipe (``kdistill.runs.recipes``).
"""

from kdistill.runs.compare import COMPARISON, evaluate_run, run_comparison, run_seeds, seed_config, write_comparison
from kdistill.runs.generate import generate
from kdistill.runs.pipeline import RunResult, distill, fit, train
from kdistill.runs.recipes import ROLES, recipe_for
from kdistill.runs.roles import role_dir

__all__ = ["COMPARISON", "ROLES", "RunResult", "distill", "evaluate_run", "fit", "generate", "recipe_for",
           "role_dir", "run_comparison", "run_seeds", "seed_config", "train", "write_comparison"]
