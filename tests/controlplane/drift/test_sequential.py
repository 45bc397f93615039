"""The sequential test: thresholds from the false-alarm rate, one outlier never alarms, sustained drift alarms
within a bounded number of requests, and simulated clean runs alarm at the configured rate."""
from __future__ import annotations

import numpy as np
import pytest

from controlplane.drift import sequential
from controlplane.drift.analysis import METRICS
from controlplane.drift.sequential import HORIZON, IN_CONTROL_RATE, for_rate

RATES = [0.001, 0.01, 0.05, 0.2]


def simulate(cusum: sequential.Cusum, *, breach_rate: float, runs: int, requests: int, seed: int,
             metrics: int = 1) -> np.ndarray:
    """Alarmed (bool per run) for `runs` independent streams, `metrics` CUSUMs each, vectorized over runs."""
    rng = np.random.default_rng(seed)
    statistic = np.zeros((runs, metrics), dtype=np.int64)
    alarmed = np.zeros(runs, dtype=bool)
    for _ in range(requests):
        breached = rng.random((runs, metrics)) < breach_rate
        statistic = np.where(breached, np.minimum(statistic + cusum.breach_step, cusum.cap),
                             np.maximum(statistic - cusum.clean_step, 0))
        alarmed |= (statistic >= cusum.threshold).any(axis=1)
    return alarmed


@pytest.mark.parametrize("rate", RATES)
def test_threshold_is_the_smallest_meeting_the_false_alarm_rate(rate):
    cusum = for_rate(rate, len(METRICS))
    share = rate / len(METRICS)
    at = cusum.alarm_probability(breach_rate=IN_CONTROL_RATE, requests=HORIZON)
    below = sequential._alarm_probability(cusum.breach_step, cusum.clean_step, cusum.threshold - 1,
                                          IN_CONTROL_RATE, HORIZON)
    assert at <= share < below
    assert at > 0.8 * share  # the lattice is fine enough that the rate is met closely, not just bounded


def test_exact_alarm_probability_matches_simulation():
    cusum = sequential.Cusum(breach_step=57, clean_step=16, threshold=150, false_alarm_rate=0.0)
    exact = cusum.alarm_probability(breach_rate=0.15, requests=60)
    runs = 40_000
    simulated = simulate(cusum, breach_rate=0.15, runs=runs, requests=60, seed=11).mean()
    sigma = np.sqrt(exact * (1 - exact) / runs)
    assert 0.05 < exact < 0.95
    assert abs(simulated - exact) < 4 * sigma, (simulated, exact)


def test_simulated_clean_runs_alarm_at_the_configured_rate():
    """Clean runs at the worst in-control breach rate, all four metrics: the family's rate is near the policy's."""
    rate, runs = 0.05, 20_000
    cusum = for_rate(rate, len(METRICS))
    alarmed = simulate(cusum, breach_rate=IN_CONTROL_RATE, runs=runs, requests=HORIZON, seed=5,
                       metrics=len(METRICS))
    measured = alarmed.mean()
    exact = 1 - (1 - cusum.alarm_probability(breach_rate=IN_CONTROL_RATE, requests=HORIZON)) ** len(METRICS)
    sigma = np.sqrt(exact * (1 - exact) / runs)
    print(f"false-alarm rate over {runs} clean runs of {HORIZON} requests: {measured:.4f} "
          f"(configured {rate}, exact {exact:.4f})")
    assert abs(measured - exact) < 4 * sigma
    assert 0.8 * rate < measured <= rate + 4 * sigma
    # A healthy engine breaches far less often than the in-control bound: it practically never alarms.
    assert simulate(cusum, breach_rate=0.01, runs=2000, requests=HORIZON, seed=6, metrics=4).sum() == 0


@pytest.mark.parametrize("rate", RATES)
def test_one_outlier_never_alarms(rate):
    cusum = for_rate(rate, len(METRICS))
    rng = np.random.default_rng(3)
    # An outlier after any clean history, even right after another one a few requests back.
    for history in (0, 1, 5, 100):
        statistic = cusum.run(0, list(rng.random(history) < IN_CONTROL_RATE / 5) + [True])
        assert not cusum.alarmed(statistic)
    assert cusum.breaches_to_alarm() >= 3


def test_sustained_drift_alarms_within_a_bounded_number_of_requests():
    cusum = for_rate(0.01, len(METRICS))  # the default policy's rate
    # Every request breaching: the alarm comes at a fixed count, whatever came before.
    statistic, count = cusum.run(0, [False] * 500), 0
    while not cusum.alarmed(statistic):
        statistic, count = cusum.update(statistic, True), count + 1
    assert count == cusum.breaches_to_alarm() <= 6
    # Half of the requests breaching (the rate the test is tuned for): within 30 requests 95% of the time.
    assert cusum.alarm_probability(breach_rate=0.5, requests=30) > 0.95
    delays = []
    rng = np.random.default_rng(8)
    for _ in range(500):
        statistic, n = 0, 0
        while not cusum.alarmed(statistic):
            statistic, n = cusum.update(statistic, bool(rng.random() < 0.5)), n + 1
        delays.append(n)
    assert np.mean(delays) < 20 and max(delays) < 80


def test_an_alarm_clears_a_few_clean_requests_after_drift_stops():
    cusum = for_rate(0.01, len(METRICS))
    statistic = cusum.run(0, [True] * 50)
    assert statistic == cusum.cap and cusum.alarmed(statistic)
    clean_to_clear = -(-cusum.breach_step // cusum.clean_step) + 1
    assert not cusum.alarmed(cusum.run(statistic, [False] * clean_to_clear))


def test_false_alarm_rate_must_be_a_probability():
    with pytest.raises(ValueError, match="false_alarm_rate must be in"):
        for_rate(0.0)
