"""Candidate formats a search may give a unit, what each costs in stored bits, and which a profile runs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runtime.accelerators import AcceleratorProfile
from runtime.errors import InputError
from runtime.modules.mixed_linear import row_index_dtype
from runtime.modules.quant_linear import INT4_SCALE_DTYPE
from runtime.recipes import QuantArgs, Recipe, Scheme

WIDE = "bf16"  # "keep wide": the format every unit may always stay in
# Stored bits per scale or zero point, as QuantLinear writes them: int4 groups keep a bf16 scale and
# a bf16 zero point each; per-channel int8/fp8 keep one fp32 scale per row.
_INT4_META_BITS = 2 * torch.finfo(INT4_SCALE_DTYPE).bits
_CHANNEL_SCALE_BITS = 32


def moved_row_bits(out_features: int) -> int:
    """Stored bits per row a mixed op moves out of its main part (MixedLinear's row index)."""
    return torch.iinfo(row_index_dtype(out_features)).bits


@dataclass(frozen=True)
class Candidate:
    """A format a unit can take: weights and (optionally) input activations, as a recipe scheme says them."""

    name: str
    weights: QuantArgs
    input_activations: QuantArgs | None = None

    @property
    def is_wide(self) -> bool:
        return self.weights.is_wide and self.input_activations is None

    def scheme(self) -> Scheme:
        return Scheme(weights=self.weights, input_activations=self.input_activations)

    def row_bits(self, in_features: int) -> int:
        """Stored bits of one output row of an [out, in] weight: values plus their scales and zero points."""
        w = self.weights
        if w.is_wide:
            return in_features * 16 if w.format in ("bf16", "fp16") else in_features * 32
        if w.format == "int4":
            return in_features * 4 + (in_features // w.group_size) * _INT4_META_BITS
        return in_features * 8 + _CHANNEL_SCALE_BITS

    def bits_per_weight(self, in_features: int) -> float:
        return self.row_bits(in_features) / in_features

    def fits(self, in_features: int) -> bool:
        """Group sizes must divide the input dimension."""
        g = self.weights.group_size
        return g is None or in_features % g == 0


def _args(**kw) -> QuantArgs:
    return QuantArgs(**kw)


_TOKEN_INT8 = {"format": "int8", "strategy": "token", "dynamic": True}
_TOKEN_FP8 = {"format": "fp8_e4m3", "strategy": "token", "dynamic": True}

CANDIDATES: dict[str, Candidate] = {
    c.name: c for c in (
        Candidate("bf16", _args(format="bf16")),
        Candidate("int8", _args(format="int8", strategy="channel")),
        Candidate("fp8_e4m3", _args(format="fp8_e4m3", strategy="channel")),
        Candidate("fp8_e5m2", _args(format="fp8_e5m2", strategy="channel")),
        Candidate("int4_g128", _args(format="int4", strategy="group", group_size=128)),
        Candidate("int4_g64", _args(format="int4", strategy="group", group_size=64)),
        Candidate("int4_g32", _args(format="int4", strategy="group", group_size=32)),
        Candidate("int4_g128_asym", _args(format="int4", strategy="group", group_size=128, symmetric=False)),
        Candidate("int4_g64_asym", _args(format="int4", strategy="group", group_size=64, symmetric=False)),
        Candidate("int4_g32_asym", _args(format="int4", strategy="group", group_size=32, symmetric=False)),
        Candidate("int8_w8a8", _args(format="int8", strategy="channel"), _args(**_TOKEN_INT8)),
        Candidate("fp8_w8a8", _args(format="fp8_e4m3", strategy="channel"), _args(**_TOKEN_FP8)),
    )
}
# Weight-only formats: the budget counts weight bits, and at equal bits a W8A8 candidate only adds
# activation error, so activation-quantized candidates are opt-in (they buy speed, not bits).
DEFAULT_CANDIDATES = ("int4_g128", "int4_g128_asym", "int8", "fp8_e4m3", "bf16")


def get_candidates(names: list[str] | tuple[str, ...]) -> list[Candidate]:
    """Candidates by name, with "keep wide" (bf16) always among them."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise InputError(f"unknown candidate formats {unknown}; known: {', '.join(CANDIDATES)}", loc=("candidates",))
    chosen = list(dict.fromkeys(list(names) + [WIDE]))
    return [CANDIDATES[n] for n in chosen]


class _Probe(nn.Module):
    """The smallest model a plan resolves: one linear op, on the meta device."""

    def __init__(self):
        super().__init__()
        with torch.device("meta"):
            self.probe = nn.Linear(128, 8, bias=False)


def admissible(candidate: Candidate, profile: AcceleratorProfile) -> tuple[bool, str]:
    """(admitted, reason): a candidate is admitted when the profile's plan runs it as asked, with no fallback.

    This is `profile.check` for the weight and activation formats plus the plan's kernel pairing:
    a format the profile only emulates on a real device (e5m2 weights on H100, fp8 on A100) or an
    activation format no kernel pairs with the weights would silently become something else.
    """
    from runtime.plans import resolve

    if candidate.is_wide:
        return True, "keep wide: always a candidate"
    recipe = Recipe(name="probe", default=candidate.scheme())
    op = resolve(recipe, _Probe(), profile).op("probe")
    if op.fallbacks:
        return False, "; ".join(f"{f.field}: {f.reason}" for f in op.fallbacks)
    return True, f"{op.kernel} ({profile.check(candidate.weights.format, 'weight')[1]})"
