"""Matching recipe targets to ops, and the checks that need the model."""
from __future__ import annotations

import re
from functools import lru_cache

from torch import nn

from runtime.models import LinearOp, linear_ops
from runtime.recipes.schema import Recipe, RecipeError, Rule, Scheme

_CLASS_TARGETS = {"Linear"}


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def matches(target: str, op: LinearOp) -> bool:
    """`re:<regex>` matches from the start of the module name; `Linear` matches every linear; else exact name."""
    if target.startswith("re:"):
        return _regex(target[3:]).match(op.name) is not None
    if target in _CLASS_TARGETS:
        return not op.is_lm_head  # the class target never pulls the logits op in: it stays wide unless named
    return target == op.name


def is_literal(target: str) -> bool:
    return not target.startswith("re:") and target not in _CLASS_TARGETS


def resolve_scheme(recipe: Recipe, op: LinearOp) -> tuple[Scheme | None, str, str]:
    """(scheme or None for wide, rule label, reason) for one op: ignore first, then rules in order, then default."""
    for k, ig in enumerate(recipe.ignore):
        if matches(ig.target, op):
            return None, f"ignore[{k}]", ig.reason
    for i, rule in enumerate(recipe.rules):
        if any(matches(t, op) for t in rule.targets):
            return rule, f"rules[{i}]", rule.reason
    if op.is_lm_head:
        return None, "sensitive", "logits stay wide unless a rule names the output projection"
    return recipe.default, "default", "recipe default"


def _check_group_size(loc: tuple, scheme: Scheme, op: LinearOp, errors: list) -> None:
    w = scheme.weights
    if w is not None and w.group_size and op.in_features % w.group_size:
        errors.append({"loc": loc + ("weights", "group_size"),
                       "msg": f"group_size {w.group_size} does not divide the input dimension {op.in_features} "
                              f"of {op.name}"})


def validate_for_model(recipe: Recipe, model: nn.Module) -> list[LinearOp]:
    """Checks a recipe against a model; raises RecipeError naming every offending field."""
    ops = linear_ops(model)
    errors: list[dict] = []
    for i, rule in enumerate(recipe.rules):
        for j, t in enumerate(rule.targets):
            if not any(matches(t, op) for op in ops):
                errors.append({"loc": ("rules", i, "targets", j), "msg": f"target {t!r} matches no module of the model"})
    for k, ig in enumerate(recipe.ignore):
        if not any(matches(ig.target, op) for op in ops):
            errors.append({"loc": ("ignore", k, "target"), "msg": f"target {ig.target!r} matches no module of the model"})
    for op in ops:
        scheme, label, _ = resolve_scheme(recipe, op)
        if scheme is not None:
            loc = ("default",) if label == "default" else ("rules", int(label[6:-1]))
            _check_group_size(loc, scheme, op, errors)
    # A later rule that literally names an op an earlier rule already took, with other formats, contradicts it.
    for i, rule in enumerate(recipe.rules):
        for j, t in enumerate(rule.targets):
            if not is_literal(t):
                continue
            for op in ops:
                if op.name != t:
                    continue
                winner = next((k for k, r in enumerate(recipe.rules[:i]) if any(matches(x, op) for x in r.targets)), None)
                if winner is not None and recipe.rules[winner].signature() != rule.signature():
                    errors.append({"loc": ("rules", i, "targets", j),
                                   "msg": f"{t!r} is already given other formats by rules[{winner}] "
                                          "(first match wins), so this rule contradicts it"})
    if errors:
        # One message per field is enough; a group size that fails on 30 layers is one error.
        unique = {(e["loc"]): e for e in errors}
        raise RecipeError(list(unique.values()))
    return ops


def rule_for(recipe: Recipe, label: str) -> Rule | Scheme | None:
    if label == "default":
        return recipe.default
    if label.startswith("rules["):
        return recipe.rules[int(label[6:-1])]
    return None
