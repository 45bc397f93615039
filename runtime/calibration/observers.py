"""Observers: turn a stream of tensors into an amax (per tensor, or per channel of the last dim)
and a scale = amax / fmax.

Register a new one with `@register_observer("name")`; `get_observer(name, **kwargs)` builds it.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import torch

from runtime.calibration.errors import CalibrationError
from runtime.calibration.sampling import RowSampler, percentile
from runtime.errors import InputError

# Smallest amax a scale is built from, as in kernels.act_quant: an all-zero tensor gets a tiny
# positive scale, never 0 (which would divide by zero) and never a silent 1.0.
AMAX_FLOOR = 1e-12

OBSERVERS: dict[str, type["Observer"]] = {}
# Argument spellings recipes use (`observer_kwargs: {history: 16}`) mapped to constructor names.
_KWARG_ALIASES = {"history": "length"}


def register_observer(name: str):
    """Class decorator adding an Observer subclass to the registry under `name`."""
    def wrap(cls: type["Observer"]) -> type["Observer"]:
        cls.name = name
        OBSERVERS[name] = cls
        return cls
    return wrap


def get_observer(name: str, **kwargs) -> "Observer":
    """Builds a registered observer; unknown names and bad arguments are InputErrors naming the field."""
    try:
        cls = OBSERVERS[name]
    except KeyError:
        raise InputError(f"unknown observer {name!r}; known observers: {', '.join(OBSERVERS)}",
                         loc=("observer",)) from None
    kwargs = {_KWARG_ALIASES.get(k, k): v for k, v in kwargs.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"bad arguments for observer {name!r}: {exc}", loc=("observer_kwargs",)) from None


def abs_amax(rows: torch.Tensor) -> torch.Tensor:
    """max |x| per column of [N, C] in one pass with no |x| copy; NaN propagates."""
    lo, hi = torch.aminmax(rows, dim=0)
    return torch.maximum(hi, lo.neg())


class Observer:
    """Base class. `update(x)` folds in a tensor; `amax()` is a 0-d tensor (per tensor) or [C]
    (per channel, C = x.shape[-1]); `scale(fmax)` is amax / fmax, floored so it is never 0."""

    name = "observer"

    def __init__(self, *, per_channel: bool = False):
        self.per_channel = per_channel
        self.channels: int | None = None
        self.steps = 0

    def update(self, x: torch.Tensor) -> None:
        """Folds one tensor (any shape; channels are its last dim when per channel) into the state."""
        rows = self._rows(x)
        self.observe(rows, abs_amax(rows))

    def observe(self, rows: torch.Tensor, batch_amax: torch.Tensor) -> None:
        """Folds in fp32 rows [N, C] (C = 1 per tensor) whose per-column max |x| the caller has
        already taken: the calibration hooks share one pass over each activation."""
        if self.channels is not None and rows.shape[1] != self.channels:
            raise InputError(f"expected {self.channels} channels in the last dim, got {rows.shape[1]}", loc=("x",))
        if not torch.isfinite(batch_amax).all():
            raise InputError("tensor has NaN or infinite values; its range cannot be calibrated", loc=("x",))
        self._update(rows, batch_amax.reshape(rows.shape[1:]))
        self.channels = rows.shape[1]
        self.steps += 1

    def amax(self) -> torch.Tensor:
        """The observed amax: 0-d when per tensor, [C] when per channel."""
        if self.steps == 0:
            raise CalibrationError(f"{self.name} observer has seen no data; call update() first",
                                   loc=("observer",))
        a = self._amax()
        return a if self.per_channel else a.reshape(())

    def scale(self, fmax: float) -> torch.Tensor:
        """amax / fmax, with amax floored at AMAX_FLOOR so the scale is never 0."""
        if not (isinstance(fmax, (int, float)) and math.isfinite(fmax) and fmax > 0):
            raise InputError(f"fmax must be a finite positive number, got {fmax!r}", loc=("fmax",))
        return self.amax().clamp(min=AMAX_FLOOR) / fmax

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 [rows, C], C = 1 when per tensor; a view of x where possible, never written to.
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError("observers take floating-point tensors", loc=("x",))
        if x.numel() == 0:
            raise InputError("cannot observe an empty tensor", loc=("x",))
        return x.detach().reshape(-1, x.shape[-1] if self.per_channel else 1).float()

    def _update(self, rows: torch.Tensor, batch_amax: torch.Tensor) -> None:
        raise NotImplementedError

    def _amax(self) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(per_channel={self.per_channel}, steps={self.steps})"


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Running max of |x| over everything seen."""

    def __init__(self, *, per_channel: bool = False):
        super().__init__(per_channel=per_channel)
        self._max: torch.Tensor | None = None

    def _update(self, rows: torch.Tensor, batch_amax: torch.Tensor) -> None:
        self._max = batch_amax if self._max is None else torch.maximum(self._max, batch_amax)

    def _amax(self) -> torch.Tensor:
        return self._max


@register_observer("percentile")
class PercentileObserver(Observer):
    """The q-th percentile of |x| (per channel: over that channel's values).

    Computed over a bounded uniform sample of all values seen (see `sampling.RowSampler`):
    exact while the stream fits in `capacity` values per channel, an unbiased estimate after.
    Default capacity: 2^17 values per tensor (13 values above the 99.99th), 2^12 per channel.
    """

    def __init__(self, q: float = 99.99, *, per_channel: bool = False, capacity: int | None = None, seed: int = 0):
        super().__init__(per_channel=per_channel)
        if not 0.0 < q <= 100.0:
            raise InputError(f"q must be in (0, 100], got {q}", loc=("q",))
        self.q = float(q)
        self._sampler = RowSampler(int(capacity or (2**12 if per_channel else 2**17)), seed=seed)
        self._max: torch.Tensor | None = None

    def _update(self, rows: torch.Tensor, batch_amax: torch.Tensor) -> None:
        self._max = batch_amax if self._max is None else torch.maximum(self._max, batch_amax)
        self._sampler.add(rows)

    def _amax(self) -> torch.Tensor:
        sample = self._sampler.rows()
        if sample.shape[0] == 0:  # everything thinned away: only possible with a tiny capacity
            return self._max
        return torch.minimum(percentile(sample.abs().sort(dim=0).values, self.q), self._max)


def _fp8_round_trip(dtype: torch.dtype, fmax: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def round_trip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (x / scale).clamp(-fmax, fmax).to(dtype).float() * scale
    return round_trip


def _int_round_trip(qmin: float, qmax: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def round_trip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.round(x / scale).clamp(qmin, qmax) * scale
    return round_trip


# Symmetric quantize-dequantize round trips, (x, scale) -> x_hat, with the fmax scale = amax / fmax
# is built from. They match runtime.formats.fake_quantize (int8 is [-127, 127], int4 is [-8, 7]).
ROUND_TRIPS: dict[str, tuple[float, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "fp8_e4m3": (448.0, _fp8_round_trip(torch.float8_e4m3fn, 448.0)),
    "fp8_e5m2": (57344.0, _fp8_round_trip(torch.float8_e5m2, 57344.0)),
    "int8": (127.0, _int_round_trip(-127.0, 127.0)),
    "int4": (7.0, _int_round_trip(-8.0, 7.0)),
}


@register_observer("mse")
class MseObserver(Observer):
    """MSE-optimal clipping: the amax = r * max|x| that minimises the quantize-dequantize MSE,
    with r searched over 1, 1 - 1/grid, ... down to 1 - max_shrink.

    The MSE is measured on a bounded uniform sample of the values seen (as PercentileObserver).
    `fmt` names a built-in round trip (fp8_e4m3, fp8_e5m2, int8, int4); or pass `fake_quant`,
    a callable (x, scale) -> x_hat, with the `fmax` its scale is built from.
    """

    def __init__(
        self,
        fmt: str = "fp8_e4m3",
        *,
        per_channel: bool = False,
        grid: int = 100,
        max_shrink: float = 0.8,
        fake_quant: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        fmax: float | None = None,
        capacity: int | None = None,
        seed: int = 0,
    ):
        super().__init__(per_channel=per_channel)
        if fake_quant is None:
            if fmt not in ROUND_TRIPS:
                raise InputError(f"no built-in round trip for format {fmt!r}; use one of "
                                 f"{', '.join(ROUND_TRIPS)} or pass fake_quant and fmax", loc=("fmt",))
            self.fmax, self.fake_quant = ROUND_TRIPS[fmt]
        else:
            if fmax is None or fmax <= 0:
                raise InputError("a custom fake_quant needs the positive fmax its scales use", loc=("fmax",))
            self.fmax, self.fake_quant = float(fmax), fake_quant
        if int(grid) < 1:
            raise InputError(f"grid must be >= 1, got {grid}", loc=("grid",))
        if not 0.0 <= max_shrink < 1.0:
            raise InputError(f"max_shrink must be in [0, 1), got {max_shrink}", loc=("max_shrink",))
        self.fmt = fmt
        steps = int(round(max_shrink * int(grid)))
        self.ratios = [1.0 - i / int(grid) for i in range(steps + 1)]
        self._sampler = RowSampler(int(capacity or (2**10 if per_channel else 2**16)), seed=seed)
        self._max: torch.Tensor | None = None
        self._best: torch.Tensor | None = None

    def _update(self, rows: torch.Tensor, batch_amax: torch.Tensor) -> None:
        self._max = batch_amax if self._max is None else torch.maximum(self._max, batch_amax)
        self._sampler.add(rows)
        self._best = None

    def _amax(self) -> torch.Tensor:
        if self._best is None:
            self._best = self._search()
        return self._best

    def _search(self) -> torch.Tensor:
        sample = self._sampler.rows().abs()  # symmetric round trips: the error of -x is that of x
        amax = self._max.clamp(min=AMAX_FLOOR)
        if sample.shape[0] == 0:
            return self._max
        best_err = torch.full_like(amax, float("inf"))
        best = amax.clone()
        for r in self.ratios:  # one [rows, C] pass per candidate keeps memory flat
            candidate = amax * r
            err = (self.fake_quant(sample, candidate / self.fmax) - sample).pow(2).mean(dim=0)
            better = err < best_err  # strict: ties keep the larger (earlier) amax
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, candidate, best)
        return torch.where(self._max > 0, best, self._max)


@register_observer("amax_history")
class AmaxHistoryObserver(Observer):
    """Delayed scaling: amax = max over the last `length` updates (steps)."""

    def __init__(self, length: int = 16, *, per_channel: bool = False):
        super().__init__(per_channel=per_channel)
        if int(length) != length or length < 1:
            raise InputError(f"length must be a positive integer, got {length}", loc=("length",))
        self.length = int(length)
        self._history: deque[torch.Tensor] = deque(maxlen=self.length)

    def _update(self, rows: torch.Tensor, batch_amax: torch.Tensor) -> None:
        self._history.append(batch_amax)

    def _amax(self) -> torch.Tensor:
        return torch.stack(list(self._history)).amax(dim=0)

    @property
    def history(self) -> list[torch.Tensor]:
        """Per-step amax, oldest first."""
        return list(self._history)
