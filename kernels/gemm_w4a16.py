"""W4A16 GEMM: packed int4 weights with group-wise scales and zeros, 16-bit activations."""
import torch

from kernels._launch import check_2d, check_dtype, check_shape, use_triton
from kernels.packing import pack_int4, unpack_int4

X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Symmetric int4 stores codes q = round(w / scale) + 8, so the zero point is always 8.
SYMMETRIC_ZERO = 8


def _check_group(k: int, group_size: int) -> None:
    if group_size <= 0 or group_size % 2:
        raise ValueError(f"group_size must be a positive even number, got {group_size}")
    if k % group_size:
        raise ValueError(f"K={k} must be a multiple of group_size={group_size}")


def quantize_w4_reference(w: torch.Tensor, group_size: int = 128, symmetric: bool = True):
    """Quantizes a weight matrix to int4 codes per group of ``group_size`` along K.

    Args:
        w: float [N, K] weights; K a multiple of group_size.
        group_size: elements along K sharing one scale and zero (128 in the default recipes).
        symmetric: True gives scale = amax / 7 and zero = 8 (codes 1..15); False gives
            scale = (max - min) / 15 and zero = round(-min / scale) in 0..15.

    Returns:
        ``(packed uint8 [N, K // 2], scales [N, K // group_size], zeros [N, K // group_size])``;
        scales and zeros have w's dtype and dequantize as ``(q - zero) * scale``.
    """
    check_2d("w", w)
    check_dtype("w", w, *SCALE_DTYPES)
    n, k = w.shape
    _check_group(k, group_size)
    # read NK ; write NK/2 + 2 NK/g
    wg = w.float().reshape(n, k // group_size, group_size)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scales = (wg.abs().amax(dim=2) / 7.0).clamp(min=tiny)
        zeros = torch.full_like(scales, float(SYMMETRIC_ZERO))
    else:
        lo = wg.amin(dim=2).clamp(max=0.0)
        hi = wg.amax(dim=2).clamp(min=0.0)
        scales = ((hi - lo) / 15.0).clamp(min=tiny)
        zeros = torch.round(-lo / scales).clamp(0, 15)
    # Round the scales to their storage dtype first so codes are chosen for the stored scale.
    scales = scales.to(w.dtype).float()
    q = torch.round(wg / scales[..., None]) + zeros[..., None]
    q = q.clamp(0, 15).to(torch.uint8).reshape(n, k)
    return pack_int4(q), scales.to(w.dtype), zeros.to(w.dtype)


def dequantize_w4_reference(packed, scales, zeros, group_size: int) -> torch.Tensor:
    """Unpacks and dequantizes int4 weights to fp32 [N, K]."""
    n, k = packed.shape[0], packed.shape[1] * 2
    q = unpack_int4(packed, k).float().reshape(n, k // group_size, group_size)
    return ((q - zeros.float()[..., None]) * scales.float()[..., None]).reshape(n, k)


def _check_w4a16(x, packed, scales, zeros, group_size, bias) -> None:
    check_2d("x", x)
    check_dtype("x", x, *X_DTYPES)
    check_2d("packed", packed)
    check_dtype("packed", packed, torch.uint8)
    k = x.shape[1]
    n = packed.shape[0]
    if packed.shape[1] * 2 != k:
        raise ValueError(f"packed must be [N, K // 2] with K={k} (from x), got {list(packed.shape)}")
    _check_group(k, group_size)
    check_dtype("scales", scales, *SCALE_DTYPES)
    check_shape("scales", scales, (n, k // group_size))
    check_dtype("zeros", zeros, scales.dtype)
    check_shape("zeros", zeros, (n, k // group_size))
    if bias is not None:
        check_shape("bias", bias, (n,))


def gemm_w4a16_reference(x, packed, scales, zeros, group_size: int, bias=None):
    """Pure-torch :func:`gemm_w4a16`: dequantize to fp32, fp32 matmul, cast to x.dtype."""
    _check_w4a16(x, packed, scales, zeros, group_size, bias)
    # read MK + NK/2 + 2 NK/g ; write MN (plus an NK fp32 temporary for the dequantized weight)
    w = dequantize_w4_reference(packed, scales, zeros, group_size)
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def gemm_w4a16(x, packed, scales, zeros, group_size: int = 128, bias=None, *, backend: str = "auto"):
    """``x @ dequant(packed).T + bias`` with int4 weights dequantized per group.

    Args:
        x: [M, K] bf16, fp16 or fp32 activations.
        packed: uint8 [N, K // 2] int4 codes (see :func:`kernels.packing.pack_int4`).
        scales: [N, K // group_size] float scales.
        zeros: [N, K // group_size] zero points, same dtype as scales; value = (q - zero) * scale.
        group_size: K elements per scale (128 in the default recipes).
        bias: [N] or None.
        backend: ``auto``, ``triton`` or ``reference``.

    Returns:
        [M, N] in x.dtype.
    """
    # TODO(issue 3 step 2): the Triton kernel takes the use_triton(x, backend) branch.
    use_triton(x, backend)
    return gemm_w4a16_reference(x, packed, scales, zeros, group_size, bias)
