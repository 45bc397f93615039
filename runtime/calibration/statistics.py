"""Per-tensor activation statistics gathered during calibration, and their accumulators."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from runtime.calibration.observers import Observer, abs_amax
from runtime.calibration.sampling import RowSampler, percentile

PERCENTILES = (99.0, 99.9, 99.99)
# A channel is an outlier when its amax exceeds this multiple of the median channel amax
# (the activation outliers LLM.int8() and SmoothQuant describe show up as 10-100x).
OUTLIER_RATIO = 6.0
# Log2 histogram range: bin i counts |x| in [2^(HIST_MIN_EXP + i), 2^(HIST_MIN_EXP + i + 1)).
# Values below 2^HIST_MIN_EXP land in bin 0, values above the range in the last bin; exact
# zeros are counted apart. The histogram counts the percentile sample (every value while
# percentile_exact): an exact bincount of every activation cost more than the forward pass
# itself on 2 CPU cores, and shares of 1e-4 and up are what it is read for. amax and
# channel_amax stay exact, so rare outliers are never lost.
HIST_MIN_EXP = -32
HIST_BINS = 64
# Values per tensor kept for the percentiles: exact below this, a uniform sample above.
PERCENTILE_SAMPLE = 2**17
_ZERO_BIN = -1 - HIST_MIN_EXP


class Log2Histogram(BaseModel):
    """Counts of |x| per power-of-two bin: counts[i] covers [2^(min_exp+i), 2^(min_exp+i+1)).
    Counts are of the uniform percentile sample; divide by their sum (plus zeros) for shares."""

    model_config = ConfigDict(extra="forbid")

    min_exp: int = HIST_MIN_EXP
    counts: list[int]
    zeros: int = Field(0, description="exact zeros, which have no log2 bin")

    def edges(self) -> list[float]:
        """The len(counts) + 1 bin edges."""
        return [2.0 ** (self.min_exp + i) for i in range(len(self.counts) + 1)]


class TensorStats(BaseModel):
    """Statistics of one linear layer's input activation over the calibration corpus."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(description="size of the last dim (the layer's input features)")
    tokens: int = Field(description="rows (tokens) observed")
    amax: float = Field(description="max |x| over everything observed")
    rms: float = Field(description="root mean square of x")
    channel_amax: list[float] = Field(description="max |x| per input channel")
    percentiles: dict[str, float] = Field(description="percentiles of |x|, keyed '99', '99.9', '99.99'")
    percentile_exact: bool = Field(description="False when percentiles and histogram come from a uniform sample")
    histogram: Log2Histogram
    outlier_channels: list[int] = Field(description=f"channels whose amax > {OUTLIER_RATIO}x the median channel amax")
    observer_amax: float = Field(description="the amax the calibration's observer chose; scales come from it")


class KVStats(BaseModel):
    """Per-KV-head amax of one attention layer's keys and values, taken at the key/value
    projection outputs (keys before RoPE), where runtime.modules.kv_cache quantizes them."""

    model_config = ConfigDict(extra="forbid")

    heads: int
    head_dim: int
    k_amax: list[float]
    v_amax: list[float]


class StatsAccumulator:
    """Folds [tokens, channels] activations into TensorStats; the observer picks observer_amax."""

    def __init__(self, observer: Observer, *, sample: int = PERCENTILE_SAMPLE, seed: int = 0):
        self.observer = observer
        self.tokens = 0
        self._sum_sq = 0.0
        self._channel_amax: torch.Tensor | None = None
        self._sampler = RowSampler(sample, seed=seed)

    def update(self, rows: torch.Tensor) -> None:
        """Folds in activations [tokens, channels] (any float dtype, any device); never writes to them.

        Three passes over the data (aminmax, vector_norm, a sparse gather): no |x| copy.
        """
        a = rows.detach().float()
        channel_amax = abs_amax(a)
        if self.observer.per_channel:
            self.observer.observe(a, channel_amax)
        else:
            self.observer.observe(a.reshape(-1, 1), channel_amax.max())
        self._channel_amax = channel_amax if self._channel_amax is None \
            else torch.maximum(self._channel_amax, channel_amax)
        self.tokens += a.shape[0]
        self._sum_sq += float(torch.linalg.vector_norm(a)) ** 2
        self._sampler.add(a.reshape(-1, 1))

    def finalize(self) -> TensorStats:
        """The statistics so far."""
        channel_amax = self._channel_amax.cpu()
        n = channel_amax.numel() * self.tokens
        values = self._sampler.rows().reshape(-1).abs().sort().values
        zeros = values.numel() - int(torch.count_nonzero(values))
        # frexp: |x| = m * 2^e with m in [0.5, 1), so floor(log2 |x|) = e - 1; frexp(0) has e = 0,
        # so zeros land in the bin of [0.5, 1) and are moved out.
        exponent = torch.frexp(values).exponent.sub_(1 + HIST_MIN_EXP).clamp_(0, HIST_BINS - 1)
        hist = torch.bincount(exponent, minlength=HIST_BINS)
        hist[_ZERO_BIN] -= zeros
        median = float(channel_amax.median())
        outliers = (channel_amax > OUTLIER_RATIO * median).nonzero().reshape(-1).tolist() if median > 0 else []
        return TensorStats(
            channels=channel_amax.numel(),
            tokens=self.tokens,
            amax=float(channel_amax.max()),
            rms=(self._sum_sq / n) ** 0.5,
            channel_amax=channel_amax.tolist(),
            percentiles={_key(q): float(percentile(values, q)) for q in PERCENTILES},
            percentile_exact=self._sampler.rate == 1.0,
            histogram=Log2Histogram(counts=hist.tolist(), zeros=zeros),
            outlier_channels=outliers,
            observer_amax=float(self.observer.amax()),
        )


def _key(q: float) -> str:
    return f"{q:g}"
