"""Window analysis: the four outcomes and their precedence, what an engine must measure, winsorized means and
quantiles against a float64 reference, and the evidence (layers, slices, calibration coverage)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from controlplane.canary.schemas import CanarySampleIn
from controlplane.deployments.schemas import DriftPolicyIn
from controlplane.drift import analysis
from controlplane.drift.analysis import METRICS, Outcome, decide, expected_measurements
from controlplane.drift.sequential import for_rate

from .conftest import HOT_LAYER, SHORT_ENGLISH, STATIC_FP8_MANIFEST, sample

POLICY = DriftPolicyIn()  # the defaults: min_samples 50, false-alarm rate 0.01
CUSUM = for_rate(POLICY.false_alarm_rate, len(METRICS))
EXPECTED = {"saturation", "amax_ratio"}


def samples(n: int, rng: random.Random, **kwargs) -> list[CanarySampleIn]:
    return [CanarySampleIn.model_validate(sample(1, rng, **kwargs)) for _ in range(n)]


def run(window, statistics=None, *, expected=EXPECTED, calibration=SHORT_ENGLISH, policy=POLICY):
    return decide(samples=window, policy=policy, statistics=statistics or {}, cusum=CUSUM, expected=expected,
                  calibration=calibration)


def sequence(window, policy=POLICY) -> dict[str, int]:
    """The CUSUM statistics after the window's samples, in order."""
    stats = dict.fromkeys(METRICS, 0)
    for s in window:
        for metric, breached in analysis.breaches(s, policy).items():
            stats[metric] = CUSUM.update(stats[metric], breached)
    return stats


@pytest.fixture
def rng():
    return random.Random(99)


def test_clean_window_is_successful(rng):
    window = samples(60, rng)
    result = run(window, sequence(window))
    assert result.outcome == Outcome.successful and result.reason == "60 samples within every limit"
    assert {c.name: c.status for c in result.checks} == dict.fromkeys(
        ["kl_mean", "kl_p95", "top1_agreement", "saturation", "amax_ratio"], "within")
    assert result.layers == [] and result.slices == []  # evidence is gathered only when it is needed


def test_sustained_drift_fails_with_evidence(rng):
    window = samples(55, rng) + samples(6, rng, drift=True)
    result = run(window, sequence(window))
    assert result.outcome == Outcome.failed and set(result.failed_metrics) == set(METRICS)
    assert result.reason.startswith("sustained drift: kl CUSUM")
    assert [layer["layer"] for layer in result.saturating_layers] == [HOT_LAYER]
    [drifted] = result.drifted_slices
    assert drifted["slice"] == "CJK/512-2048" and drifted["covered"] is False
    assert drifted["breach_share"] == dict.fromkeys(METRICS, 1.0)


def test_too_few_samples_is_inconclusive_even_when_values_are_over(rng):
    window = samples(10, rng, kl_mean=0.08, kl_max=0.1)
    result = run(window, sequence(window))
    assert result.outcome == Outcome.inconclusive and not result.between
    assert result.reason == "not enough samples: 10 in the window, the policy needs 50"


def test_between_thresholds_is_inconclusive(rng):
    window = samples(60, rng, top1_agreement=0.88)  # every request a little under 0.9: a breach each
    stats = dict.fromkeys(METRICS, 0)  # as if the sequential test had not caught up yet
    result = run(window, stats)
    assert result.outcome == Outcome.inconclusive and result.between
    assert result.reason == ("between thresholds: top1_agreement 0.88 under 0.9, without sequential evidence "
                             "of drift")


def test_missing_measurement_is_an_error_but_drift_still_fails(rng):
    window = samples(60, rng, amax_ratio={})
    result = run(window, sequence(window))
    assert result.outcome == Outcome.error
    assert result.reason == ("measurement missing: no sample of the 60 in the window reports amax_ratio, which the "
                             "engine should measure")
    # An engine without calibrated ranges reports no amax ratios: nothing is missing then.
    assert run(window, sequence(window), expected={"saturation"}).outcome == Outcome.successful
    drifted = samples(60, rng, drift=True, amax_ratio={})
    assert run(drifted, sequence(drifted)).outcome == Outcome.failed  # failed takes precedence


def test_empty_window_is_inconclusive(rng):
    result = run([], {})
    assert result.outcome == Outcome.inconclusive and result.sample_count == 0
    assert {c.status for c in result.checks} == {"insufficient"}


@pytest.mark.parametrize("manifest, expected", [
    (STATIC_FP8_MANIFEST, {"saturation", "amax_ratio"}),
    ({"plan": {"ops": [{"name": "a", "activation": "fp8_e4m3", "kv_cache": None}]}, "calibrated_amax": {}},
     {"saturation"}),  # dynamic per-token scales: saturation counted, no calibrated range
    ({"plan": {"ops": [{"name": "a", "activation": "bf16", "kv_cache": "fp8_e4m3"}]}}, {"saturation"}),
    ({"plan": {"ops": [{"name": "a", "activation": "bf16", "kv_cache": "bf16"}]}}, set()),
    ({"ops": [{"name": "model.layers.0.mlp.down_proj", "weight": "fp8_e4m3"}], "fallbacks": []}, set()),
    ({}, set()),
])
def test_expected_measurements_follow_the_manifest(manifest, expected):
    assert expected_measurements(manifest) == expected


def test_window_values_against_a_float64_reference(rng):
    window = samples(200, rng) + samples(7, rng, drift=True)
    checks = {c.name: c for c in analysis.window_checks(window, POLICY, EXPECTED)}
    kl = np.array([s.kl_mean for s in window], dtype=np.float64)
    cap = analysis.WINSOR * POLICY.kl_mean_max
    expected_mean = np.minimum(kl, cap).mean()
    assert abs(checks["kl_mean"].value - expected_mean) / expected_mean < 1e-12
    assert abs(checks["kl_p95"].value - np.percentile(kl, 95)) / np.percentile(kl, 95) < 1e-12
    ratio = np.array([s.amax_ratio[HOT_LAYER] for s in window])
    assert checks["amax_ratio"].layer == HOT_LAYER
    assert abs(checks["amax_ratio"].value - np.percentile(ratio, 95)) / np.percentile(ratio, 95) < 1e-12
    top1 = np.array([s.top1_agreement for s in window])
    expected_top1 = 1 - np.minimum(1 - top1, analysis.WINSOR * (1 - POLICY.top1_agreement_min)).mean()
    assert abs(checks["top1_agreement"].value - expected_top1) / expected_top1 < 1e-12


def test_one_broken_request_cannot_move_a_window_mean_past_its_limit(rng):
    window = samples(49, rng) + samples(1, rng, kl_mean=1e6, kl_max=1e6, top1_agreement=0.0)
    checks = {c.name: c for c in analysis.window_checks(window, POLICY, EXPECTED)}
    assert checks["kl_mean"].status == "within" and checks["top1_agreement"].status == "within"


def test_slices_without_a_calibration_profile_have_unknown_coverage(rng):
    window = samples(55, rng) + samples(6, rng, drift=True)
    result = run(window, sequence(window), calibration=None)
    assert {s["slice"]: s["covered"] for s in result.slices} == {"CJK/512-2048": None, "Latin/0-128": None}
    untagged = samples(6, rng, drift=True, slice=None)
    assert analysis.slice_of(untagged[0]) == "CJK/512-2048"
