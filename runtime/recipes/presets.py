"""Named recipes, a plain dict like compressed-tensors' PRESET_SCHEMES."""
from __future__ import annotations

from runtime.recipes.schema import Recipe

_FP8_W = {"format": "fp8_e4m3", "strategy": "channel"}
_FP8_A_DYN = {"format": "fp8_e4m3", "strategy": "token", "dynamic": True}
_INT8_W = {"format": "int8", "strategy": "channel"}
_INT8_A_DYN = {"format": "int8", "strategy": "token", "dynamic": True}
_INT4_G128 = {"format": "int4", "strategy": "group", "group_size": 128}

PRESETS: dict[str, dict] = {
    "bf16": {"name": "bf16", "description": "bf16 weights and activations: the baseline",
             "default": {"weights": {"format": "bf16"}}},
    "fp8_w8a8": {"name": "fp8_w8a8", "description": "fp8 e4m3 per-channel weights, per-token dynamic activations",
                 "default": {"weights": _FP8_W, "input_activations": _FP8_A_DYN}},
    "int8_w8a8": {"name": "int8_w8a8", "description": "int8 per-channel weights, per-token dynamic activations",
                  "default": {"weights": _INT8_W, "input_activations": _INT8_A_DYN}},
    "int4_w4a16_g128": {"name": "int4_w4a16_g128", "description": "int4 weight-only, groups of 128, symmetric",
                        "default": {"weights": _INT4_G128}},
    "fp8_weight_only": {"name": "fp8_weight_only", "description": "fp8 e4m3 per-channel weights, bf16 activations",
                        "default": {"weights": _FP8_W}},
    "mixed_fp8_int4": {
        "name": "mixed_fp8_int4",
        "description": "int4 g128 MLPs where bandwidth dominates; attention in fp8 W8A8; first and last blocks wider",
        "default": {"weights": _INT4_G128},
        "rules": [
            {"targets": ["re:model\\.layers\\.0\\.", "re:model\\.layers\\.3\\."],
             "weights": _FP8_W, "input_activations": _FP8_A_DYN,
             "reason": "first and last blocks carry the largest activation outliers; int4 costs them the most"},
            {"targets": ["re:.*self_attn\\."], "weights": _FP8_W, "input_activations": _FP8_A_DYN,
             "reason": "attention projections are small; fp8 keeps their error low at little extra bandwidth"},
        ],
        "kv_cache_scheme": {"format": "fp8_e4m3", "dynamic": True},
    },
}


def preset(name: str) -> Recipe:
    """A named recipe."""
    from runtime.errors import InputError

    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}", loc=("preset",))
    return Recipe.from_dict(PRESETS[name])
