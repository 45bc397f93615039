"""Plans: a recipe resolved against a model and an accelerator. No fallback is silent."""
from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field
from torch import nn

from runtime.accelerators import AcceleratorProfile, Support
from runtime.accelerators.profiles import GEMM_KERNELS
from runtime.models import attention_layers, linear_ops, norm_ops
from runtime.recipes import QuantArgs, Recipe, RecipeError, resolve_scheme, validate_for_model

OpKind = Literal["linear", "lm_head", "attention", "kv_cache", "norm", "embedding"]
WIDE = "bf16"  # the reference precision a wide op runs in


class Fallback(BaseModel):
    """Where the plan departs from what the recipe asked, and why."""

    field: str
    requested: str
    effective: str
    reason: str


class OpPlan(BaseModel):
    """One op with its effective formats and the kernel that runs it."""

    name: str
    op_kind: OpKind
    weight: str = WIDE
    activation: str = WIDE
    kv_cache: str | None = None
    accumulator: str = "fp32"
    weight_args: QuantArgs | None = None
    activation_args: QuantArgs | None = None
    kernel: str
    support: Support = Support.native
    rule: str
    reason: str
    scale_source: str | None = None
    in_features: int | None = None
    out_features: int | None = None
    fallbacks: list[Fallback] = Field(default_factory=list)
    # Per-output-feature mixed ops: each part runs its own formats over `channels` (rows of the weight).
    channels: list[int] | None = None
    parts: list["OpPlan"] = Field(default_factory=list)


class Plan(BaseModel):
    """Every linear, attention, KV-cache, norm and embedding op with its effective precision."""

    recipe_name: str
    recipe_hash: str
    accelerator: str
    ops: list[OpPlan]

    def fallbacks(self) -> list[tuple[str, Fallback]]:
        """(op name, fallback) for every departure from the recipe."""
        return [(op.name, fb) for op in self.ops for fb in op.fallbacks]

    def op(self, name: str) -> OpPlan:
        return next(o for o in self.ops if o.name == name)

    def linear_ops(self) -> list[OpPlan]:
        return [o for o in self.ops if o.op_kind in ("linear", "lm_head")]

    def summary(self) -> dict:
        """Counts of ops per (weight, activation) format pair and per kernel, and the fallback count."""
        lin = self.linear_ops()
        return {
            "formats": dict(Counter(_formats_label(o) for o in lin)),
            "kernels": dict(Counter(o.kernel for o in lin)),
            "fallbacks": len(self.fallbacks()),
        }


def _formats_label(o: OpPlan) -> str:
    if o.parts:
        return "mixed(" + " + ".join(f"W:{p.weight} A:{p.activation} x{len(p.channels)}" for p in o.parts) + ")"
    return f"W:{o.weight} A:{o.activation}"


def _quantized(args: QuantArgs | None) -> QuantArgs | None:
    return None if args is None or args.is_wide else args


def _linear_plan(recipe: Recipe, op, profile: AcceleratorProfile) -> OpPlan:
    scheme, label, reason = resolve_scheme(recipe, op)
    plan = _scheme_plan(recipe, op, profile, scheme, label, reason)
    overrides = getattr(scheme, "output_channels", None)
    return _mixed_plan(recipe, op, profile, plan, overrides, label) if overrides else plan


def _mixed_plan(recipe: Recipe, op, profile: AcceleratorProfile, main: OpPlan, overrides, label: str) -> OpPlan:
    """An op whose output features split into parts, each with its own formats (MixLLM-style)."""
    parts, taken = [], set()
    for j, ch in enumerate(overrides):
        bad = [c for c in ch.channels if c >= op.out_features]
        if bad:
            raise RecipeError(f"channels {bad[:5]} are out of range: {op.name} has {op.out_features} output features",
                              loc=("rules", int(label[6:-1]), "output_channels", j, "channels"))
        part = _scheme_plan(recipe, op, profile, ch, label, ch.reason)
        parts.append(part.model_copy(update={
            "channels": list(ch.channels), "out_features": len(ch.channels),
            "fallbacks": [f.model_copy(update={"field": f"output_channels[{j}].{f.field}"}) for f in part.fallbacks]}))
        taken.update(ch.channels)
    rest = [c for c in range(op.out_features) if c not in taken]
    if rest:
        parts.insert(0, main.model_copy(update={"channels": rest, "out_features": len(rest)}))
    head = parts[0]
    return head.model_copy(update={
        "channels": None, "out_features": op.out_features, "parts": parts, "reason": main.reason,
        "kernel": "mixed(" + " + ".join(f"{p.weight}:{p.kernel}" for p in parts) + ")",
        "fallbacks": [f for p in parts for f in p.fallbacks]})


def _scheme_plan(recipe: Recipe, op, profile: AcceleratorProfile, scheme, label: str, reason: str) -> OpPlan:
    w = _quantized(scheme.weights) if scheme else None
    a = _quantized(scheme.input_activations) if scheme else None
    fallback = scheme.fallback if scheme else WIDE
    fbs: list[Fallback] = []
    if a is not None:
        sup, why = profile.check(a.format, "activation")
        if sup == Support.unsupported:
            fbs.append(Fallback(field="input_activations", requested=a.format, effective=fallback, reason=why))
            a = None
    if w is not None:
        sup, why = profile.check(w.format, "weight")
        if sup == Support.unsupported:
            fbs.append(Fallback(field="weights", requested=w.format, effective=fallback, reason=why))
            w = None
        elif sup == Support.emulated and not profile.reference_only:
            fbs.append(Fallback(field="compute", requested=f"{w.format} matmul",
                                effective=f"{w.format} weights dequantized to {fallback}", reason=why))
    if a is not None and (w is None or (w.format, a.format) not in GEMM_KERNELS
                          or profile.check(w.format, "weight")[0] != Support.native and not profile.reference_only):
        wname = w.format if w else (scheme.weights.format if scheme and scheme.weights else WIDE)
        fbs.append(Fallback(field="input_activations", requested=a.format, effective=fallback,
                            reason=f"no {profile.name} kernel multiplies {a.format} activations by {wname} weights"))
        a = None
    support = Support.emulated if profile.reference_only or (w and profile.check(w.format, "weight")[0] == Support.emulated) \
        else Support.native
    wide_w = scheme.weights.format if scheme and scheme.weights and scheme.weights.is_wide else WIDE
    return OpPlan(
        name=op.name, op_kind="lm_head" if op.is_lm_head else "linear",
        weight=w.format if w else (fallback if any(f.field == "weights" for f in fbs) else wide_w),
        activation=a.format if a else WIDE,
        accumulator=scheme.accumulator if scheme else "fp32",
        weight_args=w, activation_args=a,
        kernel=profile.kernel(w.format if w else None, a.format if a else None),
        support=support, rule=label, reason=reason,
        scale_source=None if a is None else ("dynamic" if a.dynamic else f"calibrated:{recipe.calibration.corpus}"),
        in_features=op.in_features, out_features=op.out_features, fallbacks=fbs,
    )


def _kv_plan(recipe: Recipe, attn: str, profile: AcceleratorProfile) -> OpPlan:
    kv = recipe.kv_cache_scheme
    if kv is None:
        return OpPlan(name=f"{attn}.kv_cache", op_kind="kv_cache", kv_cache=WIDE, kernel="attention", rule="default",
                      reason="no kv_cache_scheme: the KV cache stays in the model's wide dtype")
    sup, why = profile.check(kv.format, "kv_cache")
    fbs = []
    fmt = kv.format
    if sup == Support.unsupported:
        fbs.append(Fallback(field="kv_cache_scheme", requested=kv.format, effective=WIDE, reason=why))
        fmt = WIDE
    source = None if fmt == WIDE else ("dynamic" if kv.dynamic else f"calibrated:{recipe.calibration.corpus}")
    return OpPlan(name=f"{attn}.kv_cache", op_kind="kv_cache", kv_cache=fmt, kernel="attention+kv_dequantize",
                  support=sup if fmt != WIDE else Support.native, rule="kv_cache_scheme", reason=why,
                  scale_source=source, fallbacks=fbs)


def resolve(recipe: Recipe, model: nn.Module, profile: AcceleratorProfile) -> Plan:
    """Resolves a recipe against a model and an accelerator profile into a plan."""
    validate_for_model(recipe, model)
    ops: list[OpPlan] = [OpPlan(name=n, op_kind="embedding", kernel="embedding", rule="sensitive",
                                reason="embedding lookups stay in the model's wide dtype")
                         for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    ops += [_linear_plan(recipe, op, profile) for op in linear_ops(model)]
    for attn in attention_layers(model):
        ops.append(OpPlan(name=attn, op_kind="attention", kernel="sdpa", rule="sensitive", accumulator="fp32",
                          reason="softmax and attention scores stay wide (sensitive op)"))
        ops.append(_kv_plan(recipe, attn, profile))
    ops += [OpPlan(name=n, op_kind="norm", weight="fp32", activation="fp32", kernel="norm", rule="sensitive",
                   reason="normalisation reductions stay wide (sensitive op)") for n in norm_ops(model)]
    return Plan(recipe_name=recipe.name, recipe_hash=recipe.content_hash(), accelerator=profile.name, ops=ops)
