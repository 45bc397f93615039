"""Drift-analysis fixtures: canary samples drawn clean or drifted, engines with a static-fp8 manifest and a
calibration corpus that covers short English only, and deployments wired the way a rollout leaves them."""
from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from controlplane.deployments.models import Stage
from tests import factories

LAYERS = [f"model.layers.{i}.{op}" for i in range(2) for op in ("self_attn.q_proj", "mlp.down_proj")]
HOT_LAYER = "model.layers.1.mlp.down_proj"  # the layer drifted samples push past its calibrated range

# What a static-fp8 engine's manifest says about the measurements its samples must carry.
STATIC_FP8_MANIFEST = {
    "plan": {"ops": [{"name": name, "op_kind": "linear", "weight": "fp8_e4m3", "activation": "fp8_e4m3",
                      "kv_cache": None} for name in LAYERS]},
    "calibrated_amax": {name: 4.0 for name in LAYERS},
}
SHORT_ENGLISH = {"samples": 256, "max_tokens": 120, "mean_tokens": 40.0,
                 "length_buckets": {"0-128": 1.0, "128-512": 0.0, "512-2048": 0.0, "2048+": 0.0},
                 "scripts": {"Latin": 1.0, "CJK": 0.0, "Cyrillic": 0.0}}


def sample(engine_id: int, rng: random.Random, *, drift: bool = False, request_id: str | None = None,
           **overrides) -> dict:
    """One canary sample as serving posts it: clean short English, or long CJK that leaves the calibrated ranges."""
    if drift:
        kl = rng.uniform(0.3, 0.6)
        body = {"kl_mean": kl, "kl_max": kl * rng.uniform(1.5, 4.0), "top1_agreement": rng.uniform(0.55, 0.8),
                "saturation": {n: (rng.uniform(0.004, 0.02) if n == HOT_LAYER else rng.uniform(0, 2e-4))
                               for n in LAYERS},
                "amax_ratio": {n: (rng.uniform(2.5, 4.0) if n == HOT_LAYER else rng.uniform(0.8, 1.0))
                               for n in LAYERS},
                "slice": "CJK/512-2048", "length_bucket": "512-2048", "script": "CJK",
                "num_tokens": rng.randint(512, 2000)}
    else:
        kl = rng.uniform(0.002, 0.03)
        body = {"kl_mean": kl, "kl_max": kl * rng.uniform(1.0, 5.0), "top1_agreement": rng.uniform(0.93, 1.0),
                "saturation": {n: rng.uniform(0, 2e-4) for n in LAYERS},
                "amax_ratio": {n: rng.uniform(0.6, 1.0) for n in LAYERS},  # inside the calibrated ranges
                "slice": "Latin/0-128", "length_bucket": "0-128", "script": "Latin",
                "num_tokens": rng.randint(8, 120)}
    return {"engine_id": engine_id, **({"request_id": request_id} if request_id else {}), **body, **overrides}


@dataclass
class Rollout:
    """An endpoint whose active deployment replaced an older engine (its last known good)."""

    endpoint: str
    previous: object  # the retired deployment of the last known-good engine
    active: object


def static_engine(**kwargs):
    """A passing engine with a static-fp8 manifest, calibrated on a short-English corpus."""
    calibration = factories.CalibrationFactory(corpus=factories.CorpusFactory(coverage=SHORT_ENGLISH))
    return factories.passing_engine(manifest=STATIC_FP8_MANIFEST, calibration_id=calibration.id, **kwargs)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240611)


@pytest.fixture
def rollout(session) -> Rollout:
    """`previous` (retired) handed the endpoint to `active`, a static-fp8 engine; its policy is the default."""
    endpoint = f"chat-{random.Random().randrange(10**9)}"
    good = factories.passing_engine()
    previous = factories.DeploymentFactory(endpoint=endpoint, engine=good, stage=Stage.retired)
    active = factories.DeploymentFactory(endpoint=endpoint, engine=static_engine(), stage=Stage.active,
                                         traffic_share=1.0, last_known_good_engine_id=good.id)
    session.commit()
    return Rollout(endpoint, previous, active)
