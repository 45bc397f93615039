"""A bounded uniform sample of rows from a stream, for percentiles and MSE searches over huge tensors.

Every row seen is kept with the same probability `rate`. While the sample fits in `capacity`
rows the rate is 1 and the sample is the whole stream, so small tensors get exact percentiles.
Before an update would overflow it, each kept row survives a coin flip and the rate halves
(as often as needed), so memory stays below `capacity` rows and the work per update is
proportional to the rows kept, not the rows seen. Sampling inside one update is with replacement (a row may be drawn twice), which keeps
every row's expected multiplicity equal to `rate`. A seeded generator makes it reproducible.
"""
from __future__ import annotations

import torch


class RowSampler:
    """Uniform sample of at most `capacity` rows of a [rows, channels] stream."""

    def __init__(self, capacity: int, *, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.rate = 1.0
        self.seen = 0
        self._chunks: list[torch.Tensor] = []
        self._kept = 0
        self._gen = torch.Generator().manual_seed(seed)

    def add(self, rows: torch.Tensor) -> None:
        """Offers rows [n, channels]; keeps each with probability `rate`."""
        n = rows.shape[0]
        self.seen += n
        # Lower the rate before drawing, so a large update is never copied whole only to be thinned.
        while self._kept + n * self.rate > self.capacity:
            self._thin()
        if self.rate < 1.0:
            k = int(torch.binomial(torch.tensor(float(n)), torch.tensor(self.rate), generator=self._gen))
            if k == 0:
                return
            idx = torch.randint(n, (k,), generator=self._gen).to(rows.device)
            rows = rows.index_select(0, idx)
        # Copy while sampling everything: the rows may be a view of a live activation.
        self._chunks.append(rows.detach().to(device="cpu", dtype=torch.float32, copy=self.rate == 1.0))
        self._kept += rows.shape[0]
        while self._kept > self.capacity:
            self._thin()

    def rows(self) -> torch.Tensor:
        """The sample so far, [kept, channels] fp32 on the CPU."""
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks)]
        return self._chunks[0] if self._chunks else torch.empty(0)

    def _thin(self) -> None:
        if self._kept:
            sample = self.rows()
            keep = torch.rand(sample.shape[0], generator=self._gen) < 0.5
            self._chunks = [sample[keep]]
            self._kept = int(keep.sum())
        self.rate /= 2


def percentile(sorted_values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile (0..100) along dim 0 of sorted values, interpolated linearly
    between closest ranks (numpy's default "linear" method)."""
    n = sorted_values.shape[0]
    pos = q / 100.0 * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac
