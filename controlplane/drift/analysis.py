"""One drift analysis: a window of canary samples and the sequential statistics -> an outcome with its evidence.

Outcomes, as Argo Rollouts names them:
  failed        the sequential test holds an alarm on some metric (sustained drift, never one noisy request);
  error         a measurement the engine should report is missing from every sample in the window;
  inconclusive  fewer than `min_samples` samples in the window, or a window value past its limit that the
                sequential test does not (yet) back: between the thresholds, a human decides;
  successful    enough samples, every window value within its limit, no alarm.

Window means are winsorized: one request counts at most WINSOR times its limit, so a single broken request
cannot move the mean of `min_samples` requests past the limit.
"""
from __future__ import annotations

import enum
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.drift.sequential import Cusum
from runtime.formats import WIDE_FORMATS

WINSOR = 4.0
# The metrics the sequential test watches; each request breaches each one or not.
METRICS = ("kl", "top1_agreement", "saturation", "amax_ratio")


class Outcome(str, enum.Enum):
    successful = "successful"
    failed = "failed"
    inconclusive = "inconclusive"
    error = "error"


class Sample(Protocol):
    """What analysis reads of a canary sample (the stored row and the ingested schema both fit)."""

    kl_mean: float
    top1_agreement: float
    saturation: dict[str, float]
    amax_ratio: dict[str, float]
    slice: str | None
    length_bucket: str | None
    script: str | None


class Policy(Protocol):
    kl_mean_max: float
    kl_p95_max: float
    top1_agreement_min: float
    saturation_max: float
    amax_ratio_max: float
    min_samples: int


def breaches(sample: Sample, policy: Policy) -> dict[str, bool]:
    """Whether one request breaches each metric's per-request limit."""
    return {
        "kl": sample.kl_mean > policy.kl_p95_max,
        "top1_agreement": sample.top1_agreement < policy.top1_agreement_min,
        "saturation": max(sample.saturation.values(), default=0.0) > policy.saturation_max,
        "amax_ratio": max(sample.amax_ratio.values(), default=0.0) > policy.amax_ratio_max,
    }


def expected_measurements(manifest: dict[str, Any]) -> set[str]:
    """The per-layer measurements an engine's samples must carry: saturation where inputs are quantized, amax
    ratios where a calibration fixed the ranges."""
    ops = (manifest.get("plan") or {}).get("ops") or manifest.get("ops") or []
    expected = set()
    if any(op.get("activation") not in (None, *WIDE_FORMATS) or op.get("kv_cache") not in (None, *WIDE_FORMATS)
           for op in ops):
        expected.add("saturation")
    if manifest.get("calibrated_amax"):
        expected.add("amax_ratio")
    return expected


@dataclass
class Check:
    """One window value against its limit."""

    name: str  # kl_mean, kl_p95, top1_agreement, saturation, amax_ratio
    metric: str  # the sequential metric it belongs to
    value: float | None
    limit: float
    direction: str  # "max" (value must stay at or below) or "min"
    status: str  # within, over, missing, insufficient, n/a (a measurement this engine does not make)
    layer: str | None = None  # the worst layer, for per-layer checks

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "value"}


@dataclass
class Result:
    """An analysis: its outcome, why, and the evidence an alert carries."""

    outcome: Outcome
    reason: str
    sample_count: int
    checks: list[Check]
    sequential: dict[str, dict[str, Any]]
    failed_metrics: list[str]
    between: bool = False  # inconclusive with enough samples: a value past its limit, no sequential alarm
    layers: list[dict[str, Any]] = field(default_factory=list)  # as the drifted requests saw them
    layer_samples: int = 0  # how many requests `layers` describes
    slices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def saturating_layers(self) -> list[dict[str, Any]]:
        return [layer for layer in self.layers if layer["saturating"]]

    @property
    def drifted_slices(self) -> list[dict[str, Any]]:
        return [s for s in self.slices if s["drifted"]]


# --- statistics ------------------------------------------------------------------------------------


def _capped_mean(values: Sequence[float], limit: float) -> float:
    cap = WINSOR * limit if limit > 0 else math.inf
    return sum(min(v, cap) for v in values) / len(values)


def quantile(values: Iterable[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _top1_mean(values: Sequence[float], minimum: float) -> float:
    # Winsorize the disagreement (1 - agreement) against its limit (1 - minimum).
    return 1.0 - _capped_mean([1.0 - v for v in values], 1.0 - minimum)


def _per_layer(samples: Sequence[Sample], attr: str) -> dict[str, list[float]]:
    values: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        for layer, value in getattr(s, attr).items():
            values[layer].append(value)
    return values


def _status(value: float, limit: float, direction: str, enough: bool) -> str:
    over = value > limit if direction == "max" else value < limit
    if over:
        return "over"
    return "within" if enough else "insufficient"


def window_checks(samples: Sequence[Sample], policy: Policy, expected: set[str], *,
                  min_samples: int | None = None) -> list[Check]:
    """Window values of every metric against the policy's limits (`min_samples` defaults to the policy's)."""
    n = len(samples)
    enough = n >= (policy.min_samples if min_samples is None else min_samples)
    if n == 0:
        return [Check(name, metric, None, limit, direction, "insufficient") for name, metric, limit, direction in (
            ("kl_mean", "kl", policy.kl_mean_max, "max"), ("kl_p95", "kl", policy.kl_p95_max, "max"),
            ("top1_agreement", "top1_agreement", policy.top1_agreement_min, "min"),
            ("saturation", "saturation", policy.saturation_max, "max"),
            ("amax_ratio", "amax_ratio", policy.amax_ratio_max, "max"))]
    kl = [s.kl_mean for s in samples]
    checks = [
        Check("kl_mean", "kl", _capped_mean(kl, policy.kl_mean_max), policy.kl_mean_max, "max", ""),
        Check("kl_p95", "kl", quantile(kl, 0.95), policy.kl_p95_max, "max", ""),
        Check("top1_agreement", "top1_agreement",
              _top1_mean([s.top1_agreement for s in samples], policy.top1_agreement_min),
              policy.top1_agreement_min, "min", ""),
    ]
    per_layer = {"saturation": {k: _capped_mean(v, policy.saturation_max)
                                for k, v in _per_layer(samples, "saturation").items()},
                 "amax_ratio": {k: quantile(v, 0.95) for k, v in _per_layer(samples, "amax_ratio").items()}}
    for name, limit in (("saturation", policy.saturation_max), ("amax_ratio", policy.amax_ratio_max)):
        layers = per_layer[name]
        if not layers:  # an engine without quantized inputs (or calibrated ranges) reports none
            checks.append(Check(name, name, None, limit, "max", "missing" if name in expected else "n/a"))
            continue
        worst = max(layers, key=layers.get)
        checks.append(Check(name, name, layers[worst], limit, "max", "", layer=worst))
    for check in checks:
        if not check.status:
            check.status = _status(check.value, check.limit, check.direction, enough)
    return checks


def layer_evidence(samples: Sequence[Sample], policy: Policy) -> list[dict[str, Any]]:
    """Per layer: saturation (mean and max share), amax ratio (p95 and max), how many requests breached each
    per-request limit, and the window limits it is over.

    A layer saturates when its inputs went past the calibrated range (amax ratio over 1: values beyond it were
    clipped at the format's max) or its mean saturation is over the policy's limit. Layers over a limit come
    first, then the furthest past their range.
    """
    saturation, amax = _per_layer(samples, "saturation"), _per_layer(samples, "amax_ratio")
    rows = []
    for layer in sorted(set(saturation) | set(amax)):
        sat, ratio = saturation.get(layer, []), amax.get(layer, [])
        row = {
            "layer": layer,
            "saturation_mean": sum(sat) / len(sat) if sat else None,
            "saturation_max": max(sat) if sat else None,
            "amax_ratio_p95": quantile(ratio, 0.95) if ratio else None,
            "amax_ratio_max": max(ratio) if ratio else None,
            "breaching_requests": {"saturation": sum(v > policy.saturation_max for v in sat),
                                   "amax_ratio": sum(v > policy.amax_ratio_max for v in ratio)},
        }
        row["over"] = [name for name, value, limit in (
            ("saturation", _capped_mean(sat, policy.saturation_max) if sat else None, policy.saturation_max),
            ("amax_ratio", row["amax_ratio_p95"], policy.amax_ratio_max)) if value is not None and value > limit]
        row["saturating"] = bool(row["over"]) or (row["amax_ratio_max"] or 0.0) > 1.0
        rows.append(row)
    rows.sort(key=lambda r: (not r["saturating"], not r["over"], -sum(r["breaching_requests"].values()),
                             -(r["amax_ratio_max"] or 0.0), -(r["saturation_mean"] or 0.0)))
    return rows


def slice_of(sample: Sample) -> str:
    """A sample's slice: the serving tag, else `<script>/<length bucket>`."""
    if sample.slice:
        return sample.slice
    return f"{sample.script or 'unknown'}/{sample.length_bucket or 'unknown'}"


def _covered(share_by_key: dict[str, float] | None, key: str | None) -> bool | None:
    if share_by_key is None or key is None:
        return None
    return share_by_key.get(key, 0.0) > 0.0


def slice_evidence(samples: Sequence[Sample], policy: Policy,
                   calibration: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per slice: window values, share of breaching requests, whether it drifted, and whether the calibration
    corpus (its coverage profile) has samples of the slice's length bucket and script; drifted slices first."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[slice_of(s)].append(s)
    rows = []
    for name, group in groups.items():
        bucket = Counter(s.length_bucket for s in group if s.length_bucket).most_common(1)
        script = Counter(s.script for s in group if s.script).most_common(1)
        bucket, script = (bucket[0][0] if bucket else None), (script[0][0] if script else None)
        checks = window_checks(group, policy, set(), min_samples=1)
        breached = [breaches(s, policy) for s in group]
        covered = {"length_bucket": _covered(calibration and calibration.get("length_buckets"), bucket),
                   "script": _covered(calibration and calibration.get("scripts"), script)}
        rows.append({
            "slice": name, "samples": len(group), "length_bucket": bucket, "script": script,
            "values": {c.name: c.value for c in checks},
            "over": [c.name for c in checks if c.status == "over"],
            "breach_share": {m: sum(b[m] for b in breached) / len(group) for m in METRICS},
            "drifted": any(c.status == "over" for c in checks),
            "calibration_covers": covered,
            "covered": None if None in covered.values() else all(covered.values()),
        })
    rows.sort(key=lambda r: (not r["drifted"], -r["samples"], r["slice"]))
    return rows


# --- the outcome -----------------------------------------------------------------------------------


def sequential_summary(statistics: dict[str, int], cusum: Cusum,
                       window_breaches: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each metric's CUSUM statistic against the threshold, with the window's breaching requests."""
    return {m: {"statistic": statistics.get(m, 0), "threshold": cusum.threshold,
                "alarm": cusum.alarmed(statistics.get(m, 0)), "window_breaches": window_breaches.get(m, 0)}
            for m in METRICS}


def decide(*, samples: Sequence[Sample], policy: Policy, statistics: dict[str, int], cusum: Cusum,
           expected: set[str], calibration: dict[str, Any] | None) -> Result:
    """The outcome of one analysis over a window of samples, given the sequential statistics after them.

    Args:
        samples: the window's samples (newest first or any order).
        statistics: each metric's CUSUM statistic after every sample so far.
        expected: measurements the engine must report (`expected_measurements` of its manifest).
        calibration: the coverage profile of the engine's calibration corpus, if known.
    """
    checks = window_checks(samples, policy, expected)
    counted = Counter(m for s in samples for m, hit in breaches(s, policy).items() if hit)
    sequential = sequential_summary(statistics, cusum, counted)
    failed = [m for m in METRICS if sequential[m]["alarm"]]
    missing = [c for c in checks if c.status == "missing"]
    over = [c for c in checks if c.status == "over"]
    n = len(samples)
    if failed:
        outcome = Outcome.failed
        reason = "sustained drift: " + "; ".join(
            f"{m} CUSUM {sequential[m]['statistic']} >= {cusum.threshold} "
            f"({_describe_metric(m, policy)})" for m in failed)
    elif missing:
        outcome = Outcome.error
        reason = "measurement missing: " + "; ".join(
            f"no sample of the {n} in the window reports {c.name}, which the engine should measure" for c in missing)
    elif n < policy.min_samples:
        outcome = Outcome.inconclusive
        reason = f"not enough samples: {n} in the window, the policy needs {policy.min_samples}"
    elif over:
        outcome = Outcome.inconclusive
        reason = "between thresholds: " + "; ".join(
            f"{c.name} {c.value:.4g} {'over' if c.direction == 'max' else 'under'} {c.limit:g}"
            + (f" in {c.layer}" if c.layer else "") for c in over) + ", without sequential evidence of drift"
    else:
        outcome = Outcome.successful
        reason = f"{n} samples within every limit"
    result = Result(outcome=outcome, reason=reason, sample_count=n, checks=checks, sequential=sequential,
                    failed_metrics=failed, between=outcome == Outcome.inconclusive and bool(over)
                    and n >= policy.min_samples)
    if outcome in (Outcome.failed, Outcome.inconclusive) and samples:
        result.slices = slice_evidence(samples, policy, calibration)
        # Layers as the drifted requests saw them: the drifted slices, else the breaching requests, else all.
        drifted = {row["slice"] for row in result.drifted_slices}
        population = [s for s in samples if slice_of(s) in drifted] or [
            s for s in samples if any(breaches(s, policy).values())] or list(samples)
        result.layers = layer_evidence(population, policy)
        result.layer_samples = len(population)
    return result


def _describe_metric(metric: str, policy: Policy) -> str:
    return {
        "kl": f"requests with KL over {policy.kl_p95_max:g}",
        "top1_agreement": f"requests with top-1 agreement under {policy.top1_agreement_min:g}",
        "saturation": f"requests with a layer saturating over {policy.saturation_max:g}",
        "amax_ratio": f"requests with a layer's amax over {policy.amax_ratio_max:g}x its calibrated range",
    }[metric]
