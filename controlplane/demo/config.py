"""What the demo runs: the reference model and corpora, the candidate recipes, and how big each step is."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "assets" / "models" / "pops-llama-tiny"
CORPORA = {name: REPO / "assets" / "corpora" / f"{name}.jsonl"
           for name in ("calib-en-short", "eval-en", "traffic-multiscript")}
APPROVER = "demo-approver"
BASELINE = "bf16"


def _static(fmt: str, description: str, kv: bool) -> dict:
    """A W8A8 recipe with static per-tensor activation scales calibrated on short English."""
    recipe = {"name": f"{fmt.split('_')[0]}_w8a8_static", "description": description,
              "default": {"weights": {"format": fmt, "strategy": "channel"},
                          "input_activations": {"format": fmt, "strategy": "tensor", "observer": "minmax"}},
              "calibration": {"corpus": "calib-en-short"}}
    if kv:
        recipe["kv_cache_scheme"] = {"format": "fp8_e4m3"}
    return recipe


def candidate_recipes() -> list[dict]:
    """The baseline and the candidates a latency-minded team would ship: static scales need no per-token amax,
    so they are the cheapest to serve, and they trust their calibration corpus: the drift this demo shows."""
    from runtime.recipes import preset

    return [
        preset(BASELINE).to_dict(),
        _static("fp8_e4m3", "fp8 per-channel weights; fp8 activations and KV cache with calibrated static scales",
                kv=True),
        _static("int8", "int8 per-channel weights; int8 activations with calibrated static scales", kv=False),
        preset("int4_w4a16_g128").to_dict(),
    ]


@dataclass
class DemoConfig:
    """How big the demo is; the defaults finish in a few minutes on 2 CPU cores."""

    home: Path = Path(".pops") / "demo-full"
    calibration_samples: int = 32
    calibration_seq_len: int = 128
    eval_samples: int = 24
    eval_seq_len: int = 256
    gates: list[dict] = field(default_factory=lambda: [
        {"metric": "kl_mean", "max": 0.03}, {"metric": "top1_agreement", "min": 0.85},
        {"metric": "ppl_delta_pct", "max": 5.0}])
    shadow_requests: int = 24
    canary_requests: int = 24
    canary_share: float = 0.5
    drift_requests: int = 48
    drift_prompt_tokens: int = 768  # long requests, cut to bound the demo's time
    max_tokens: int = 8
    min_samples: int = 16
    window_seconds: int = 60
    canary_window_seconds: int = 5  # embedded control plane: width of a canary aggregate window
    timeout_s: float = 300.0  # longest wait for one job, one analysis or one route change
    recipes: tuple[str, ...] = ()  # candidate names to run (the baseline always runs); empty: all of them


class DemoError(Exception):
    """The story could not go on; the message says where and why."""
