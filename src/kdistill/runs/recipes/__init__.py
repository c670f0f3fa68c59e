"""One recipe per task, found by the config's ``task``: the only place that knows tasks apart."""

from __future__ import annotations

from kdistill.runs.recipes.base import ROLES, Plan, Recipe
from kdistill.runs.recipes.causal_lm import CausalLMRecipe
from kdistill.runs.recipes.classification import ClassificationRecipe
from kdistill.runs.recipes.text import TextRecipe

RECIPES: dict[str, Recipe] = {"classification": ClassificationRecipe(), "text_classification": TextRecipe(),
                              "causal_lm": CausalLMRecipe()}


def recipe_for(cfg) -> Recipe:
    return RECIPES[cfg.task]


__all__ = ["RECIPES", "ROLES", "Plan", "Recipe", "recipe_for"]
