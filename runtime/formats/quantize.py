"""Quantize/dequantize references with TransformerEngine-style statistics (overflows%, underflows%)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from runtime.errors import InputError
from runtime.formats.spec import Format, Granularity, PerChannel, PerGroup, PerTensor, PerToken, get_format

# Scales never reach zero: an all-zero row would otherwise divide by zero.
_EPS = 1e-12
# amax / fmax * fmax can round a hair above fmax; a dynamic scale must not count its own amax as clipped.
_SAT_TOL = 1 + 2.0**-20


@dataclass(frozen=True)
class QuantStats:
    """What a quantization did to a tensor, in the vocabulary TransformerEngine users know."""

    overflows_pct: float  # share of values clipped at the format's max, in percent
    underflows_pct: float  # share of non-zero values flushed to zero, in percent
    scale_min: float
    scale_max: float
    mse: float
    amax: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class QTensor:
    """A quantized tensor: `data` in the storage dtype, with scales (and zero points for asymmetric int4).

    For per-group formats `data`, `scale` and `zero` are laid out as [..., K // g, g] and [..., K // g, 1].
    """

    data: torch.Tensor
    scale: torch.Tensor | None
    zero: torch.Tensor | None
    fmt: Format
    granularity: Granularity
    shape: torch.Size
    stats: QuantStats | None = field(default=None, compare=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Returns the values this QTensor stands for, in `dtype`."""
        x = self.data.to(torch.float32)
        if self.zero is not None:
            x = x - self.zero
        if self.scale is not None:
            x = x * self.scale
        return x.reshape(self.shape).to(dtype)

    def group_scales(self) -> torch.Tensor:
        """Per-group scales as [rows, K // g] (the layout the W4A16 kernel reads)."""
        return self.scale.reshape(*self.shape[:-1], -1)

    def group_zeros(self) -> torch.Tensor:
        return self.zero.reshape(*self.shape[:-1], -1)


def _group_view(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    if isinstance(granularity, PerGroup):
        k = x.shape[-1]
        if k % granularity.group_size:
            raise InputError(
                f"group_size {granularity.group_size} does not divide the input dimension {k}",
                loc=("group_size",),
            )
        return x.reshape(*x.shape[:-1], k // granularity.group_size, granularity.group_size)
    return x


def reduce_amax(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """amax of |x| at a granularity, shaped to broadcast against `_group_view(x)`."""
    a = x.abs().float()
    if isinstance(granularity, PerTensor):
        return a.amax().reshape([1] * x.dim())
    if isinstance(granularity, PerChannel):
        dims = [d for d in range(x.dim()) if d != granularity.axis % x.dim()]
        return a.amax(dim=dims, keepdim=True)
    if isinstance(granularity, PerToken):
        return a.amax(dim=-1, keepdim=True)
    return _group_view(a, granularity).amax(dim=-1, keepdim=True)


def _stats(x: torch.Tensor, q: QTensor, n_saturated: int) -> QuantStats:
    xf = x.float()
    deq = q.dequantize(torch.float32)
    nonzero = xf != 0
    flushed = (nonzero & (deq == 0)).sum().item()
    n = max(xf.numel(), 1)
    s = q.scale if q.scale is not None else torch.ones(1)
    return QuantStats(
        overflows_pct=100.0 * n_saturated / n,
        underflows_pct=100.0 * flushed / max(nonzero.sum().item(), 1),
        scale_min=float(s.min()),
        scale_max=float(s.max()),
        mse=float((xf - deq).pow(2).mean()),
        amax=float(xf.abs().max()) if xf.numel() else 0.0,
    )


def quantize(
    x: torch.Tensor,
    fmt: str | Format,
    granularity: Granularity = PerTensor(),
    *,
    symmetric: bool = True,
    scale: torch.Tensor | float | None = None,
    with_stats: bool = True,
) -> QTensor:
    """Quantizes `x` to `fmt` at `granularity`. A given `scale` (static, from calibration) is used as is."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    if f.is_wide:
        q = QTensor(x.to(f.storage_dtype), None, None, f, granularity, x.shape)
        if with_stats:
            sat = int((x.float().abs() > f.fmax).sum())
            q.stats = _stats(x, q, sat)
        return q
    xg = _group_view(x.float(), granularity)
    zero = None
    if f.name == "int4" and not symmetric:
        lo = xg.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = xg.amax(dim=-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / 15.0).clamp(min=_EPS) if scale is None else _as_scale(scale, xg)
        zero = torch.round(-lo / s).clamp(0, 15)
        y = xg / s + zero
        saturated = (y < -0.5 * _SAT_TOL) | (y > 15.5 * _SAT_TOL)
        data = torch.round(y).clamp(0, 15).to(torch.uint8)
    else:
        s = (reduce_amax(x, granularity).reshape_as(_amax_like(xg, x, granularity)) / f.fmax).clamp(min=_EPS) \
            if scale is None else _as_scale(scale, xg)
        y = xg / s
        saturated = y.abs() > f.fmax * _SAT_TOL
        if f.is_float:
            data = y.clamp(-f.fmax, f.fmax).to(f.storage_dtype)
        elif f.name == "int8":
            data = torch.round(y).clamp(-127, 127).to(torch.int8)
        else:  # symmetric int4: [-8, 7] stored offset by 8 as 0..15, zero point 8
            saturated = (y < -8.5 * _SAT_TOL) | (y > 7.5 * _SAT_TOL)
            data = (torch.round(y).clamp(-8, 7) + 8).to(torch.uint8)
            zero = torch.full_like(s, 8.0)
    q = QTensor(data, s.float(), zero, f, granularity, x.shape)
    if with_stats:
        q.stats = _stats(x, q, int(saturated.sum()))
    return q


def _amax_like(xg: torch.Tensor, x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    # Shape the amax so it broadcasts against the (possibly grouped) view.
    if isinstance(granularity, PerGroup):
        return xg[..., :1]
    return reduce_amax(x, granularity)


def _as_scale(scale: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(scale, dtype=torch.float32)
    if not torch.isfinite(s).all() or (s <= 0).any():
        raise InputError("scale must be finite and positive", loc=("scale",))
    return s


def fake_quantize(x: torch.Tensor, fmt: str | Format, granularity: Granularity = PerTensor(), **kw) -> torch.Tensor:
    """Quantize-dequantize round trip in x's dtype: the numerics of a format without its storage."""
    return quantize(x, fmt, granularity, with_stats=False, **kw).dequantize(x.dtype)
