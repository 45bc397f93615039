"""Numeric formats and granularities: the vocabulary every recipe, plan and kernel shares."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.errors import InputError


@dataclass(frozen=True)
class Format:
    """A numeric format. `fmax` is the largest finite magnitude a scaled value may take."""

    name: str
    bits: int
    is_float: bool
    fmax: float
    # Smallest positive magnitude the format represents; anything below flushes to zero.
    fmin: float
    storage_dtype: torch.dtype

    @property
    def is_wide(self) -> bool:
        """Formats that run as-is, with no scale (bf16, fp16, fp32)."""
        return self.bits >= 16

    @property
    def bytes_per_element(self) -> float:
        return self.bits / 8


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("fp32", 32, True, torch.finfo(torch.float32).max, torch.finfo(torch.float32).smallest_normal, torch.float32),
        Format("bf16", 16, True, torch.finfo(torch.bfloat16).max, torch.finfo(torch.bfloat16).smallest_normal, torch.bfloat16),
        Format("fp16", 16, True, 65504.0, 2.0**-24, torch.float16),
        # e4m3fn: no infinities, max 448, smallest subnormal 2^-9.
        Format("fp8_e4m3", 8, True, 448.0, 2.0**-9, torch.float8_e4m3fn),
        # e5m2: IEEE-like, max 57344, smallest subnormal 2^-16.
        Format("fp8_e5m2", 8, True, 57344.0, 2.0**-16, torch.float8_e5m2),
        # Symmetric int8 uses [-127, 127] so that negation never overflows.
        Format("int8", 8, False, 127.0, 1.0, torch.int8),
        Format("int4", 4, False, 7.0, 1.0, torch.uint8),
    )
}
FORMAT_NAMES = tuple(FORMATS)
WIDE_FORMATS = ("fp32", "bf16", "fp16")


def get_format(name: str) -> Format:
    """Looks a format up by name; an unknown name is an InputError listing the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise InputError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}", loc=("format",)) from None


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per output channel (row of an [out, in] weight)."""

    axis: int = 0


@dataclass(frozen=True)
class PerToken:
    """One scale per token (row of an [tokens, hidden] activation)."""


@dataclass(frozen=True)
class PerGroup:
    """One scale per `group_size` consecutive elements of the last dimension."""

    group_size: int

    def __post_init__(self):
        if self.group_size <= 0:
            raise InputError(f"group_size must be positive, got {self.group_size}", loc=("group_size",))


Granularity = PerTensor | PerChannel | PerToken | PerGroup
