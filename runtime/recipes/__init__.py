"""Recipes: the per-operator precision contract of a model."""
from runtime.recipes.presets import PRESETS, preset
from runtime.recipes.schema import (
    CalibrationSource,
    Ignore,
    KVCacheScheme,
    QuantArgs,
    Recipe,
    RecipeError,
    Rule,
    Scheme,
    Strategy,
    load_recipe,
)
from runtime.recipes.targets import matches, resolve_scheme, validate_for_model

__all__ = [
    "PRESETS", "CalibrationSource", "Ignore", "KVCacheScheme", "QuantArgs", "Recipe", "RecipeError", "Rule",
    "Scheme", "Strategy", "load_recipe", "matches", "preset", "resolve_scheme", "validate_for_model",
]
