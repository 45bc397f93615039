"""An endpoint's traffic profile from its canary samples, and where it leaves an engine's calibration coverage.

Counts decay by half every PROFILE_HALF_LIFE samples, so the profile follows a shift in traffic within a few
hundred requests however long the endpoint has served; a slice that reaches MIN_SHARE of recent traffic with no
calibration sample at all is a coverage gap, reported before the engine's quality has had time to fall.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from controlplane.drift.models import TrafficProfile
from runtime.corpora.coverage import CoverageGap, CoverageProfile, check_coverage

PROFILE_HALF_LIFE = 256  # samples
MIN_SHARE = 0.01  # a gap must be at least this share of recent traffic
MIN_REQUESTS = 3.0  # and this many recent requests (decayed): one stray request is not a shift


class ProfiledSample(Protocol):
    length_bucket: str | None
    script: str | None
    num_tokens: int | None


def fold(profile: TrafficProfile, samples: Sequence[ProfiledSample]) -> None:
    """Decays the profile by the batch's size and adds the batch (one batch counts as arriving at once)."""
    decay = 0.5 ** (len(samples) / PROFILE_HALF_LIFE)
    buckets = {k: v * decay for k, v in profile.length_buckets.items()}
    scripts = {k: v * decay for k, v in profile.scripts.items()}
    for key, count in Counter(s.length_bucket for s in samples if s.length_bucket).items():
        buckets[key] = buckets.get(key, 0.0) + count
    for key, count in Counter(s.script for s in samples if s.script).items():
        scripts[key] = scripts.get(key, 0.0) + count
    profile.weight = profile.weight * decay + len(samples)
    profile.tokens = profile.tokens * decay + sum(s.num_tokens or 0 for s in samples)
    profile.max_tokens = max([profile.max_tokens, *(s.num_tokens or 0 for s in samples)])
    profile.samples += len(samples)
    # New dict objects: the JSON columns are not mutation-tracked.
    profile.length_buckets, profile.scripts = buckets, scripts


def _shares(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total > 0 else {}


def as_coverage(profile: TrafficProfile) -> CoverageProfile:
    """The profile as the runtime's CoverageProfile (shares of recent traffic)."""
    return CoverageProfile(
        samples=profile.samples,
        max_tokens=profile.max_tokens,
        mean_tokens=profile.tokens / profile.weight if profile.weight > 0 else 0.0,
        length_buckets=_shares(profile.length_buckets),
        scripts=_shares(profile.scripts),
    )


def gaps(profile: TrafficProfile, calibration: dict[str, Any]) -> list[CoverageGap]:
    """Length buckets and scripts in at least MIN_SHARE of recent traffic, and MIN_REQUESTS requests, that the
    calibration corpus never had."""
    if profile.weight <= 0:
        return []
    counts = {"length": profile.length_buckets, "script": profile.scripts}
    return [g for g in check_coverage(CoverageProfile.model_validate(calibration), as_coverage(profile),
                                      min_share=MIN_SHARE)
            if g.kind in counts and counts[g.kind].get(g.key, 0.0) >= MIN_REQUESTS]
