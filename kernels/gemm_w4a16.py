"""W4A16 GEMM: packed int4 weights with group-wise scales and zeros, 16-bit activations.

Decode (M <= 32) is bound by reading the packed weights, N*K/2 bytes: the kernel splits K
across programs so every SM streams weights, accumulating fp32 partial sums with atomics.
Prefill dequantizes each weight tile in registers and feeds tensor cores; from
``DEQUANT_MIN_M`` tokens up, dequantizing once to x.dtype and calling cuBLAS is faster.
"""
import torch
import triton
import triton.language as tl

from kernels import _launch
from kernels._launch import check_2d, check_dtype, check_shape, interpreting, m_bucket, use_triton
from kernels.packing import pack_int4, unpack_int4

X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Symmetric int4 stores codes q = round(w / scale) + 8, so the zero point is always 8.
SYMMETRIC_ZERO = 8
# From this many tokens up the launcher dequantizes the weight once and calls cuBLAS. Measured
# on H100 at K = N = 8192 (bench/results/kernels-h100.md): fused 96 µs vs dequant+cuBLAS 129 at
# M = 128, 139 vs 132 at M = 256, 535 vs 247 at M = 1024.
DEQUANT_MIN_M = 256


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


def _zero_out(nargs):
    nargs["out_ptr"].zero_()


def _config(bm, bn, bk, split_k, warps, stages):
    # Split-K programs add fp32 partial sums with atomics into an output zeroed first.
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k},
        num_warps=warps, num_stages=stages, pre_hook=_zero_out if split_k > 1 else None,
    )


# Decode (M <= DECODE_MAX_M): one M tile of the bucket's height, narrow N and split K, so even
# N = 4096 gives several programs per SM streaming weights. Prefill: wide tiles, no split.
DECODE_MAX_M = 64
_CONFIGS_DECODE = [
    _config(16, 64, 128, 4, 4, 4),
    _config(16, 128, 128, 4, 4, 4),
    _config(16, 64, 128, 8, 4, 4),
    _config(16, 32, 128, 4, 4, 4),
    _config(16, 64, 128, 2, 4, 4),
    _config(16, 128, 128, 8, 4, 3),
    _config(16, 32, 128, 8, 4, 4),
    _config(16, 64, 128, 16, 4, 4),
]
_CONFIGS_PREFILL = [
    _config(64, 128, 128, 1, 4, 4),
    _config(128, 128, 128, 1, 8, 3),
    _config(128, 64, 128, 1, 4, 4),
    _config(64, 64, 128, 1, 4, 4),
]
# One config per bucket under the CPU interpreter (the decode one exercises split-K).
_CONFIGS_INTERPRET = [_config(16, 32, 64, 2, 4, 1), _config(32, 32, 64, 1, 4, 1)]


def _prune(configs, named_args, **kwargs):
    bucket, group = named_args["M_BUCKET"], kwargs.get("GROUP", named_args.get("GROUP"))
    decode = bucket <= DECODE_MAX_M
    if interpreting():
        chosen = [configs[0] if bucket <= 16 else configs[1]]
    else:
        pool = _CONFIGS_DECODE if decode else _CONFIGS_PREFILL
        chosen = [c for c in configs if c in pool][: 1 if _launch.ONE_CONFIG else None]
    # A K step never straddles two groups: one scale and zero per column per step.
    block_k = group & -group
    pruned = []
    for c in chosen:
        kw = dict(c.kwargs)
        kw["BLOCK_K"] = kw["BLOCK_K"] if group % kw["BLOCK_K"] == 0 else min(block_k, kw["BLOCK_K"])
        if decode and not interpreting():
            # One tile covers all rows: a second M tile would stream the weights twice.
            kw["BLOCK_M"] = max(16, min(bucket, DECODE_MAX_M))
        pruned.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=c.pre_hook))
    return pruned


@triton.autotune(
    configs=_CONFIGS_INTERPRET if interpreting() else _CONFIGS_DECODE + _CONFIGS_PREFILL,
    key=["M_BUCKET", "N", "K", "GROUP"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _w4a16_kernel(
    x_ptr, p_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_pn, stride_sn, stride_om,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, X_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_mn = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid_mn // num_pid_n
    pid_n = pid_mn % num_pid_n
    HALF_K: tl.constexpr = BLOCK_K // 2

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, HALF_K)
    offs_k = tl.arange(0, BLOCK_K)
    rows_x = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
    rows_w = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    mask_n = offs_n < N

    # This program's K range: whole BLOCK_K steps, so no step crosses a group boundary.
    steps = tl.cdiv(K, BLOCK_K)
    steps_per_split = tl.cdiv(steps, SPLIT_K)
    k_begin = pid_k * steps_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + steps_per_split * BLOCK_K, K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        # Packed byte j of the step holds k = k0 + 2j (low nibble) and k0 + 2j + 1 (high),
        # so the product splits into even-k and odd-k halves: no nibble interleave needed.
        p = tl.load(p_ptr + rows_w[None, :] * stride_pn + (k0 // 2 + offs_j)[:, None])
        g = k0 // GROUP
        s = tl.load(s_ptr + rows_w * stride_sn + g).to(tl.float32)
        zs = tl.load(z_ptr + rows_w * stride_sn + g).to(tl.float32) * s
        w_even = ((p & 0xF).to(tl.float32) * s[None, :] - zs[None, :]).to(x_ptr.dtype.element_ty)
        w_odd = ((p >> 4).to(tl.float32) * s[None, :] - zs[None, :]).to(x_ptr.dtype.element_ty)
        # x is read contiguously (16-byte loads the pipeliner can prefetch) and split in registers.
        x = tl.load(x_ptr + rows_x[:, None] * stride_xm + k0 + offs_k[None, :])
        x_even, x_odd = tl.split(tl.reshape(x, [BLOCK_M, HALF_K, 2]))
        if X_FP32:
            # fp32 activations get full-precision products, not Triton's default tf32.
            acc = tl.dot(x_even, w_even, acc, input_precision="ieee")
            acc = tl.dot(x_odd, w_odd, acc, input_precision="ieee")
        else:
            acc = tl.dot(x_even, w_even, acc)
            acc = tl.dot(x_odd, w_odd, acc)

    mask_m = offs_m < M
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=mask)


def gemm_w4a16_triton(x, packed, scales, zeros, group_size: int, bias=None):
    """Launches :func:`_w4a16_kernel` (or dequant + cuBLAS for M >= DEQUANT_MIN_M on CUDA)."""
    _check_w4a16(x, packed, scales, zeros, group_size, bias)
    m, k = x.shape
    n = packed.shape[0]
    if m == 0 or n == 0:
        return x.new_empty(m, n)
    # Groups whose K step would be under 32 (16 packed bytes) are too small for a tensor-core
    # step; they take the dequantize path too.
    small_group = group_size & -group_size < 32
    if small_group or (x.is_cuda and m >= DEQUANT_MIN_M):
        w = dequantize_w4_triton(packed, scales, zeros, group_size, x.dtype)
        return torch.nn.functional.linear(x, w, bias.to(x.dtype) if bias is not None else None)
    x = x.contiguous()
    packed = packed.contiguous()
    scales = scales.contiguous()
    zeros = zeros.contiguous()
    bucket = m_bucket(m)
    # Decode accumulates split-K partial sums in fp32; prefill stores x.dtype directly.
    out = torch.empty(m, n, dtype=torch.float32 if bucket <= DECODE_MAX_M else x.dtype, device=x.device)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    _w4a16_kernel[grid](
        x, packed, scales, zeros, bias if bias is not None else scales, out,
        m, n, k, bucket,
        x.stride(0), packed.stride(0), scales.stride(0), out.stride(0),
        GROUP=group_size, HAS_BIAS=bias is not None, X_FP32=x.dtype == torch.float32,
    )
    return out.to(x.dtype)


@triton.jit
def _dequant_w4_kernel(p_ptr, s_ptr, z_ptr, w_ptr, K, stride_pn, stride_sn, stride_wn,
                       GROUP: tl.constexpr, BLOCK_J: tl.constexpr):
    # One program per (row, block of packed bytes); even and odd k are interleaved in registers
    # so the store is contiguous.
    row = tl.program_id(0).to(tl.int64)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask = offs_j < K // 2
    p = tl.load(p_ptr + row * stride_pn + offs_j, mask=mask, other=0)
    g = (2 * offs_j) // GROUP
    s = tl.load(s_ptr + row * stride_sn + g, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * stride_sn + g, mask=mask, other=0.0).to(tl.float32)
    lo = (((p & 0xF).to(tl.float32) - z) * s).to(w_ptr.dtype.element_ty)
    hi = (((p >> 4).to(tl.float32) - z) * s).to(w_ptr.dtype.element_ty)
    offs_k = tl.program_id(1) * 2 * BLOCK_J + tl.arange(0, 2 * BLOCK_J)
    tl.store(w_ptr + row * stride_wn + offs_k, tl.interleave(lo, hi), mask=offs_k < K)


def dequantize_w4_triton(packed, scales, zeros, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Dequantizes packed int4 weights to ``dtype`` [N, K] in one pass (prefill's cuBLAS path)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    w = torch.empty(n, k, dtype=dtype, device=packed.device)
    block_j = min(1024, triton.next_power_of_2(k // 2))
    _dequant_w4_kernel[(n, triton.cdiv(k // 2, block_j))](
        packed, scales, zeros, w, k, packed.stride(0), scales.stride(0), w.stride(0),
        GROUP=group_size, BLOCK_J=block_j,
    )
    return w


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
    if use_triton(x, backend):
        return gemm_w4a16_triton(x, packed, scales, zeros, group_size, bias)
    return gemm_w4a16_reference(x, packed, scales, zeros, group_size, bias)
