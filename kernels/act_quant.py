"""Activation quantization to fp8 e4m3 or int8: per-token dynamic or per-tensor static scales."""
import torch

from kernels._launch import check_2d, check_dtype, use_triton

FMAX = {"fp8_e4m3": 448.0, "int8": 127.0}
QDTYPE = {"fp8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}
# Floor on amax so an all-zero token gets a finite, positive scale.
AMAX_EPS = 1e-12


def _check(x: torch.Tensor, fmt: str, scale: torch.Tensor | None) -> None:
    check_2d("x", x)
    check_dtype("x", x, torch.float32, torch.float16, torch.bfloat16)
    if fmt not in FMAX:
        raise ValueError(f"fmt must be one of {sorted(FMAX)}, got {fmt!r}")
    if scale is not None and scale.numel() != 1:
        raise ValueError(f"scale must hold one per-tensor value, got shape {list(scale.shape)}")


def _static_scale(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return scale.detach().to(device=x.device, dtype=torch.float32).reshape(1, 1)


def act_quant_reference(x: torch.Tensor, fmt: str, scale: torch.Tensor | None = None):
    """Pure-torch :func:`act_quant`; the numerics every backend must reproduce."""
    _check(x, fmt, scale)
    fmax = FMAX[fmt]
    # read MK ; write MK + M (one pass for amax, one for q)
    xf = x.float()
    amax = xf.abs().amax(dim=1, keepdim=True) if x.shape[1] else xf.new_zeros(x.shape[0], 1)
    if scale is None:
        scale = amax.clamp(min=AMAX_EPS) / fmax
        # A dynamic scale covers its token's amax, so nothing can saturate; counting
        # |x| > scale * fmax here would only count the rounding of amax / fmax * fmax.
        n_saturated = torch.zeros((), dtype=torch.int64, device=x.device)
    else:
        scale = _static_scale(scale, x)
        n_saturated = (xf.abs() > scale * fmax).sum()
    y = xf / scale
    if fmt == "int8":
        q = torch.round(y).clamp(-fmax, fmax).to(torch.int8)
    else:
        # e4m3fn has no inf: an out-of-range cast gives NaN, so clamp first.
        q = y.clamp(-fmax, fmax).to(torch.float8_e4m3fn)
    return q, scale, amax, n_saturated


def act_quant(x: torch.Tensor, fmt: str, scale: torch.Tensor | None = None, *, backend: str = "auto"):
    """Quantizes activations row by row (one row per token).

    Args:
        x: float [M, K] (fp32, fp16 or bf16).
        fmt: ``fp8_e4m3`` (fmax 448) or ``int8`` (fmax 127, round half to even, clamp to ±127).
        scale: None for dynamic per-token scales ``max(amax, 1e-12) / fmax``, or a one-element
            tensor: the static per-tensor scale (from calibration).
        backend: ``auto``, ``triton`` or ``reference`` (see :func:`kernels._launch.use_triton`).

    Returns:
        ``(q, scale, amax, n_saturated)``: q [M, K] float8_e4m3fn or int8; scale fp32 [M, 1]
        (dynamic) or [1, 1] (static); amax fp32 [M, 1], the per-token max |x|; n_saturated an
        int64 0-dim tensor counting |x| > scale * fmax before the clamp (0 when dynamic).
    """
    # TODO(issue 3 step 2): the Triton kernel takes the use_triton(x, backend) branch.
    use_triton(x, backend)
    return act_quant_reference(x, fmt, scale)
