"""The engine manifest: effective precision per op, fallbacks, scale sources, bytes and casts."""
from __future__ import annotations

import torch

from runtime.formats import WIDE_FORMATS, get_format
from runtime.plans import Plan

FORMAT_VERSION = 1


def tensor_bytes(state: dict[str, torch.Tensor], linear_names: set[str] = frozenset()) -> dict[str, int]:
    """Bytes per tensor class: low-precision weights, their scales, and tensors kept wide.

    `linear_ops` (reported beside the classes, not added to the total) is what the linear ops'
    weights cost in all, scales included: the number the bandwidth of a decode step follows.
    """
    out = {"weights": 0, "scales": 0, "wide": 0}
    lin = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        owner, _, leaf = name.rpartition(".")
        if owner in linear_names and leaf != "bias":
            lin += n
        if leaf in ("weight_scale", "weight_zero", "input_scale", "k_scale", "v_scale"):
            out["scales"] += n
        elif leaf in ("weight", "weight_packed") and t.dtype in (torch.uint8, torch.int8, torch.float8_e4m3fn,
                                                                 torch.float8_e5m2):
            out["weights"] += n
        else:
            out["wide"] += n
    out["total"] = sum(out.values())
    out["linear_ops"] = lin
    return out


def kv_bytes_per_token(plan: Plan, num_kv_heads: int, head_dim: int, wide_bytes: int = 2) -> int:
    """Bytes the KV cache holds per token across all layers (keys and values)."""
    total = 0
    for op in plan.ops:
        if op.op_kind == "kv_cache":
            b = wide_bytes if op.kv_cache in WIDE_FORMATS else get_format(op.kv_cache).bytes_per_element
            total += int(2 * num_kv_heads * head_dim * b)
    return total


def casts_per_forward(plan: Plan) -> dict[str, int]:
    """Quantize/dequantize boundaries one forward pass crosses (per layer call, not per token)."""
    lin = plan.linear_ops()
    act = sum(1 for o in lin if o.activation not in WIDE_FORMATS)
    deq = sum(1 for o in lin if o.weight not in WIDE_FORMATS and o.kernel.endswith("dequantize+matmul"))
    kv = 2 * sum(1 for o in plan.ops if o.op_kind == "kv_cache" and o.kv_cache not in WIDE_FORMATS)
    return {"activation_quantize": act, "weight_dequantize": deq, "kv_quantize": kv, "total": act + deq + kv}


def scale_sources(plan: Plan, calibration_label: str | None) -> dict[str, str]:
    """Where every scale of every op comes from."""
    out = {}
    for op in plan.ops:
        parts = []
        if op.op_kind in ("linear", "lm_head") and op.weight not in WIDE_FORMATS:
            parts.append(f"weights: max-abs per {op.weight_args.strategy.value} at build")
        if op.op_kind in ("linear", "lm_head") and op.activation not in WIDE_FORMATS:
            parts.append("activations: dynamic per-token amax" if op.scale_source == "dynamic"
                         else f"activations: calibrated on {calibration_label}")
        if op.op_kind == "kv_cache" and op.kv_cache not in WIDE_FORMATS:
            parts.append("kv: dynamic per-head amax" if op.scale_source == "dynamic"
                         else f"kv: calibrated per head on {calibration_label}")
        if parts:
            out[op.name] = "; ".join(parts)
    return out
