"""The search: sensitivity, one global allocation under a budget, and a recipe with its reasons."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from runtime.accelerators import AcceleratorProfile
from runtime.corpora import Corpus
from runtime.errors import InputError
from runtime.models import linear_ops
from runtime.recipes import Recipe, validate_for_model
from runtime.search.allocation import Allocation, Budget, Granularity, allocate
from runtime.search.candidates import DEFAULT_CANDIDATES, Candidate, admissible, get_candidates
from runtime.search.emit import emit_recipe
from runtime.search.latency import LOC as LATENCY_LOC
from runtime.search.latency import allocate_for_latency, decode_model, floor_us, predict_us, slower_than_wide
from runtime.search.sensitivity import Sensitivity, measure_sensitivity


@dataclass
class SearchResult:
    """The searched recipe and everything that explains it."""

    recipe: Recipe
    allocation: Allocation
    sensitivity: Sensitivity
    candidates: list[str]  # admitted on the profile
    excluded: dict[str, str]  # candidate -> why the profile refused it
    accelerator: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a tracking run (MLflow); latency ones where the profile has a decode latency model."""
        a = self.allocation
        metrics = {"bits_per_weight": a.bits_per_weight, "predicted_kl": a.predicted_kl,
                   "budget_bits_per_weight": a.budget_bits / a.weights, "stored_bytes": a.bits / 8,
                   "rules": float(len(self.recipe.rules)), "ignored": float(len(self.recipe.ignore)),
                   "mixed_ops": float(sum(bool(r.output_channels) for r in self.recipe.rules)),
                   "sensitivity_seconds": self.sensitivity.seconds, "seconds": self.seconds}
        if a.predicted_latency_us is not None:
            metrics["predicted_latency_us"] = a.predicted_latency_us
        if a.budget.latency_us is not None:
            metrics["latency_budget_us"] = a.budget.latency_us
        return metrics

    def to_dict(self) -> dict:
        return {"recipe_hash": self.recipe.content_hash(), "recipe": self.recipe.to_dict(),
                "accelerator": self.accelerator, "candidates": self.candidates, "excluded": self.excluded,
                "allocation": self.allocation.to_dict(), "sensitivity": self.sensitivity.to_dict(),
                "metrics": self.metrics(), "notes": self.notes}


def op_candidates(model: nn.Module, candidates: list[Candidate], *, include_lm_head: bool = False,
                  ops: list[str] | None = None) -> tuple[dict[str, list[Candidate]], list[str]]:
    """(op name -> the candidates whose shapes fit it, notes on candidates an op could not take)."""
    chosen, notes = {}, []
    names = set(ops) if ops is not None else None
    for op in linear_ops(model):
        if (op.is_lm_head and not include_lm_head and names is None) or (names is not None and op.name not in names):
            continue
        fits = [c for c in candidates if c.fits(op.in_features)]
        for c in candidates:
            if c not in fits:
                notes.append(f"{op.name}: {c.name} skipped, group size {c.weights.group_size} "
                             f"does not divide in_features {op.in_features}")
        chosen[op.name] = fits
    if names is not None and names - set(chosen):
        raise InputError(f"ops {sorted(names - set(chosen))[:5]} are not linear ops of the model", loc=("ops",))
    if not chosen:
        raise InputError("no linear op to search", loc=("ops",))
    return chosen, notes


def search(
    model: nn.Module,
    tokenizer,
    corpus: Corpus,
    *,
    profile: AcceleratorProfile,
    budget: Budget,
    granularity: Granularity = "channel",
    candidates: list[str] | tuple[str, ...] = DEFAULT_CANDIDATES,
    include_lm_head: bool = False,
    ops: list[str] | None = None,
    samples: int = 64,
    seq_len: int = 128,
    batch_size: int = 8,
    draws: int = 2,
    measure: str = "cheapest",
    measure_samples: int | None = None,
    seed: int = 0,
    sensitivity: Sensitivity | None = None,
    name: str | None = None,
    model_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Searches the recipe that minimises predicted KL to the reference within a budget of stored bits.

    Args:
        model: the reference causal LM in fp32 (as `runtime.models.load_model` gives it).
        tokenizer: its tokenizer.
        corpus: calibration corpus the sensitivity is measured on.
        profile: the accelerator; only candidates its plan runs without a fallback are used.
        budget: average stored bits per weight, or total bytes, of the searched ops; or their batch-1
            decode latency on the profile (`latency_us`, needs a profile with a latency model).
        granularity: "op" (one format per linear op) or "channel" (per output feature, MixLLM-style).
        candidates: candidate format names (runtime.search.CANDIDATES); bf16 is always added.
        include_lm_head: also search the logits op (stays wide otherwise, like every preset).
        ops: search only these op names (default: every linear op but the logits op).
        samples, seq_len, batch_size, draws, measure, measure_samples, seed: see measure_sensitivity.
        sensitivity: reuse a measurement (e.g. to allocate at several budgets); must cover the ops.
        name: recipe name (default "search-<granularity>-<budget>").
        model_name: recorded in the recipe's `model` field.
        progress: progress(done, total) over the sensitivity's forward passes; a job reports it.
    """
    start = time.monotonic()
    requested = get_candidates(list(candidates))
    admitted, excluded = [], {}
    for c in requested:
        ok, why = admissible(c, profile)
        if ok:
            admitted.append(c)
        else:
            excluded[c.name] = why
    if budget.latency_us is not None:
        decode_model(profile)  # a profile without a latency model cannot take a latency budget
        in_features = max(op.in_features for op in linear_ops(model))
        slow = slower_than_wide(admitted, profile, in_features, next(c for c in admitted if c.is_wide))
        excluded.update(slow)
        admitted = [c for c in admitted if c.name not in slow]
    per_op, notes = op_candidates(model, admitted, include_lm_head=include_lm_head, ops=ops)
    _check_budget(model, per_op, budget, profile)  # before the expensive part: the floor needs no sensitivity
    if sensitivity is None:
        sensitivity = measure_sensitivity(
            model, tokenizer, corpus, per_op, samples=samples, seq_len=seq_len, batch_size=batch_size, draws=draws,
            measure=measure, measure_samples=measure_samples, seed=seed, progress=progress)
    else:
        sensitivity = _restrict(sensitivity, per_op)
    table = {c.name: c for c in admitted}
    if budget.latency_us is not None:
        allocation = allocate_for_latency(sensitivity, table, budget, granularity, profile)
    else:
        allocation = allocate(sensitivity, table, budget, granularity)
        if profile.latency is not None:
            allocation.predicted_latency_us = predict_us(allocation, table, profile)
    recipe = emit_recipe(allocation, sensitivity, table, model=model_name,
                         name=name or f"search-{granularity}-{budget.label().split()[0]}")
    validate_for_model(recipe, model)  # an emitted recipe that fails its own model is a bug, not bad input
    return SearchResult(recipe=recipe, allocation=allocation, sensitivity=sensitivity,
                        candidates=[c.name for c in admitted], excluded=excluded, accelerator=profile.name,
                        seconds=time.monotonic() - start, notes=notes)


def _check_budget(model: nn.Module, per_op: dict[str, list[Candidate]], budget: Budget,
                  profile: AcceleratorProfile) -> None:
    shapes = {op.name: (op.in_features, op.out_features) for op in linear_ops(model)}
    if budget.latency_us is not None:
        floor_us_ = floor_us(shapes, per_op, profile)
        if floor_us_ > budget.latency_us:
            raise InputError(f"latency budget {budget.latency_us:g} µs is below what the fastest allocation of these "
                             f"candidates takes on {profile.name}: {floor_us_:.1f} µs per decoded token (the floor); "
                             f"raise latency_us to at least {math.ceil(floor_us_ * 10) / 10:g}", loc=LATENCY_LOC)
        return
    weights = sum(shapes[n][0] * shapes[n][1] for n in per_op)
    floor = sum(min(c.row_bits(shapes[n][0]) for c in cands) * shapes[n][1] for n, cands in per_op.items())
    if floor > budget.total_bits(weights):
        raise InputError(f"budget {budget.label()} ({budget.total_bits(weights) / weights:.3f} bits/weight) is below "
                         f"the cheapest allocation of these candidates ({floor / weights:.3f} bits/weight)",
                         loc=("budget",))


def _restrict(sens: Sensitivity, per_op: dict[str, list[Candidate]]) -> Sensitivity:
    """A reused measurement narrowed to this search's ops and candidates."""
    from dataclasses import replace

    have = {o.name: o for o in sens.ops}
    missing = [n for n in per_op if n not in have]
    if missing:
        raise InputError(f"the given sensitivity does not cover ops {missing[:5]}", loc=("sensitivity",))
    ops = []
    for name, cands in per_op.items():
        o = have[name]
        lacking = [c.name for c in cands if c.name not in o.candidates]
        if lacking:
            raise InputError(f"the given sensitivity has no {lacking} for {name}", loc=("sensitivity",))
        keep = [c.name for c in cands]
        ops.append(replace(o, candidates=keep, rows={c: o.rows[c] for c in keep}, op={c: o.op[c] for c in keep}))
    return replace(sens, ops=ops)
