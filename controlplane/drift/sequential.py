"""The sequential test: a Bernoulli CUSUM per metric over requests that breach a limit, its threshold set exactly
from the policy's false-alarm rate.

Each canary sample either breaches a metric's per-request limit or not. A healthy engine breaches on at most
IN_CONTROL_RATE of its requests (the p95 reading of the policy's limits); drift worth acting on breaches on
DRIFT_RATE. Page's CUSUM adds each request's log-likelihood ratio of those two rates and alarms at a threshold:
one breaching request adds log(0.5 / 0.05) = 2.3, each clean one takes away log(0.95 / 0.5) = 0.64, so a single
outlier never reaches a threshold of several breaches, and sustained drift reaches it after a handful.

The statistic lives on an integer lattice (the clean step is RESOLUTION units), which makes the false-alarm
probability computable exactly by dynamic programming over the lattice states: the threshold is the smallest
one at which a healthy stream alarms within HORIZON requests with probability at most the metric's share of
the policy's false-alarm rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

IN_CONTROL_RATE = 0.05  # p0: a healthy engine's share of requests over a per-request limit
DRIFT_RATE = 0.5  # p1: the share of breaching requests the test is tuned to catch fast
HORIZON = 1000  # the false-alarm rate is the chance that a healthy stream alarms within this many requests
RESOLUTION = 16  # lattice units per clean request; the breach step is rounded to 1/16 of a clean step


@dataclass(frozen=True)
class Cusum:
    """One-sided CUSUM on breach indicators, in integer lattice units."""

    breach_step: int  # added by a breaching request
    clean_step: int  # taken away by a clean request (the statistic never goes below 0)
    threshold: int  # alarm when the statistic reaches it
    false_alarm_rate: float  # this metric's share of the policy's rate

    @property
    def cap(self) -> int:
        """The statistic's ceiling: an alarm clears after a few clean requests once drift stops."""
        return self.threshold + self.breach_step

    def update(self, statistic: int, breached: bool) -> int:
        """The statistic after one more request."""
        if breached:
            return min(statistic + self.breach_step, self.cap)
        return max(statistic - self.clean_step, 0)

    def run(self, statistic: int, breaches: list[bool]) -> int:
        """The statistic after a sequence of requests, in order."""
        for breached in breaches:
            statistic = self.update(statistic, breached)
        return statistic

    def alarmed(self, statistic: int) -> bool:
        return statistic >= self.threshold

    def breaches_to_alarm(self) -> int:
        """Consecutive breaching requests that raise an alarm from a clean start."""
        return math.ceil(self.threshold / self.breach_step)

    def alarm_probability(self, *, breach_rate: float, requests: int) -> float:
        """Exact probability that requests breaching independently at `breach_rate` alarm within `requests`."""
        return _alarm_probability(self.breach_step, self.clean_step, self.threshold, breach_rate, requests)


def _steps() -> tuple[int, int]:
    clean = math.log((1 - IN_CONTROL_RATE) / (1 - DRIFT_RATE))
    breach = math.log(DRIFT_RATE / IN_CONTROL_RATE)
    return round(breach / clean * RESOLUTION), RESOLUTION


def _alarm_probability(breach_step: int, clean_step: int, threshold: int, p: float, requests: int) -> float:
    # Distribution over the non-alarmed states 0..threshold-1; mass that reaches the threshold is absorbed.
    dist = np.zeros(threshold)
    dist[0] = 1.0
    alarmed = 0.0
    for _ in range(requests):
        nxt = np.zeros(threshold)
        # A clean request moves state s to max(s - clean_step, 0).
        nxt[0] += (1 - p) * dist[: clean_step + 1].sum()
        nxt[1 : threshold - clean_step] += (1 - p) * dist[clean_step + 1 :]
        # A breaching request moves s to s + breach_step; past the threshold it alarms.
        stay = max(threshold - breach_step, 0)
        nxt[breach_step:] += p * dist[:stay]
        alarmed += p * dist[stay:].sum()
        dist = nxt
    return float(alarmed)


@lru_cache(maxsize=64)
def for_rate(false_alarm_rate: float, metrics: int = 1) -> Cusum:
    """The CUSUM whose healthy-stream alarm probability within HORIZON requests is at most `false_alarm_rate / metrics`.

    Args:
        false_alarm_rate: the policy's rate, shared by `metrics` tests (a union bound keeps the total within it).
        metrics: how many metrics are tested side by side.
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    target = false_alarm_rate / metrics
    breach, clean = _steps()

    def rate(h: int) -> float:
        return _alarm_probability(breach, clean, h, IN_CONTROL_RATE, HORIZON)

    low, high = 1, breach
    while rate(high) > target:  # the alarm probability falls as the threshold rises
        low, high = high, high * 2
    while low < high:
        mid = (low + high) // 2
        if rate(mid) <= target:
            high = mid
        else:
            low = mid + 1
    return Cusum(breach_step=breach, clean_step=clean, threshold=high, false_alarm_rate=target)
