"""The W8A8 GEMM kernel shared by fp8 e4m3 and int8: the two differ only in the accumulator type."""
import torch
import triton
import triton.language as tl

from kernels import _launch
from kernels._launch import check_2d, check_dtype, check_shape, interpreting, m_bucket

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_w8a8(xq, xs, wq, ws, bias, out_dtype, qdtype: torch.dtype) -> None:
    """Validates the W8A8 contract shared by :mod:`kernels.gemm_fp8` and :mod:`kernels.gemm_int8`."""
    check_2d("xq", xq)
    check_2d("wq", wq)
    check_dtype("xq", xq, qdtype)
    check_dtype("wq", wq, qdtype)
    m, k = xq.shape
    n = wq.shape[0]
    if wq.shape[1] != k:
        raise ValueError(f"wq must be [N, K] with K={k} (from xq), got {list(wq.shape)}")
    check_dtype("xs", xs, torch.float32)
    check_shape("xs", xs, (m, 1), (1, 1))
    check_dtype("ws", ws, torch.float32)
    check_shape("ws", ws, (n, 1))
    if bias is not None:
        check_shape("bias", bias, (n,))
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def _zero_out(nargs):
    nargs["out_ptr"].zero_()


def _config(bm, bn, bk, warps, stages, split_k=1, group_m=8):
    # Split-K programs add fp32 partial sums with atomics into an output zeroed first.
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "SPLIT_K": split_k},
                         num_warps=warps, num_stages=stages, pre_hook=_zero_out if split_k > 1 else None)


# Configs by M bucket. Up to SPLIT_MAX_M tokens the GEMM streams weights: narrow N tiles and
# split K give every SM several programs (N = 8192 / 64 = 128 tiles alone under-fill 132 SMs,
# measured 60-70 µs at M = 64..128 vs _scaled_mm's 40). Larger M is tensor-core bound:
# 128x256 tiles with 8 warps keep two warpgroups of wgmma busy.
SPLIT_MAX_M = 128
# (The first config of each pool is the one GPU tests run: a split-K one.)
_CONFIGS_SMALL = [
    _config(16, 64, 256, 4, 4, split_k=4),
    _config(16, 64, 512, 4, 3),
    _config(16, 32, 512, 4, 4),
    _config(16, 128, 256, 4, 4),
    _config(16, 64, 256, 4, 4, split_k=2),
    _config(16, 32, 512, 4, 4, split_k=4),
]
_CONFIGS_MID = [
    _config(64, 64, 256, 4, 4, split_k=2),
    _config(64, 64, 256, 4, 4),
    _config(128, 64, 128, 4, 4),
    _config(64, 128, 128, 4, 4, split_k=4),
    _config(128, 64, 128, 4, 4, split_k=4),
    _config(128, 128, 128, 8, 4, split_k=4),
]
_CONFIGS_LARGE = [
    _config(128, 256, 128, 8, 3),
    _config(128, 256, 128, 8, 4),
    _config(256, 128, 128, 8, 3),
    _config(128, 128, 128, 8, 4),
    _config(256, 128, 128, 8, 4),
]
# One config per bucket under the CPU interpreter (the decode one exercises split-K).
_CONFIGS_INTERPRET = [_config(16, 32, 32, 4, 1, split_k=2), _config(32, 64, 64, 4, 1)]


def _prune(configs, named_args, **kwargs):
    bucket = named_args["M_BUCKET"]
    if interpreting():
        return [configs[0] if bucket <= 16 else configs[1]]
    pool = _CONFIGS_SMALL if bucket <= 32 else _CONFIGS_MID if bucket <= SPLIT_MAX_M else _CONFIGS_LARGE
    return [c for c in configs if c in pool][: 1 if _launch.ONE_CONFIG else None]


@triton.autotune(
    configs=_CONFIGS_INTERPRET if interpreting() else _CONFIGS_SMALL + _CONFIGS_MID + _CONFIGS_LARGE,
    key=["M_BUCKET", "N", "K"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _w8a8_gemm_kernel(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_om,
    XS_PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr, IS_INT8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
):
    # Grouped tile order: GROUP_M row-tiles share each weight column-tile while it is in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past M / N re-read row 0 instead of masking every load; the store drops them.
    rows_x = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
    rows_w = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    # This program's K range: whole BLOCK_K steps (so EVEN_K still holds per step).
    pid_k = tl.program_id(1)
    steps_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
    k_begin = pid_k * steps_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + steps_per_split * BLOCK_K, K)
    x_ptrs = x_ptr + rows_x[:, None] * stride_xm + (k_begin + offs_k)[None, :]
    w_ptrs = w_ptr + rows_w[None, :] * stride_wn + (k_begin + offs_k)[:, None]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if IS_INT8 else tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            a = tl.load(x_ptrs, mask=offs_k[None, :] < K - k0, other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < K - k0, other=0.0)
        if IS_INT8:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    # Epilogue: per-token x per-channel scales on the fp32 (or exact int32) sum, then bias.
    mask_m = offs_m < M
    mask_n = offs_n < N
    if XS_PER_TOKEN:
        xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
    else:
        xs = tl.load(xs_ptr + tl.zeros((BLOCK_M,), dtype=tl.int32))
    ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        if pid_k == 0:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # The scales are linear, so each split adds its scaled partial sum.
        tl.atomic_add(out_ptrs, out, mask=mask)


def w8a8_gemm_triton(xq, xs, wq, ws, bias, out_dtype, qdtype: torch.dtype):
    """Launches :func:`_w8a8_gemm_kernel` after validating the W8A8 contract."""
    check_w8a8(xq, xs, wq, ws, bias, out_dtype, qdtype)
    m, k = xq.shape
    n = wq.shape[0]
    if m == 0 or n == 0 or k == 0:
        out = torch.zeros(m, n, dtype=out_dtype, device=xq.device)
        return out + bias.to(out_dtype) if bias is not None else out
    bucket = m_bucket(m)
    # Split-K candidates accumulate in fp32; the cast afterwards is one small launch.
    out = torch.empty(m, n, dtype=torch.float32 if bucket <= SPLIT_MAX_M else out_dtype, device=xq.device)
    xq = xq if xq.stride(1) == 1 else xq.contiguous()
    wq = wq if wq.stride(1) == 1 else wq.contiguous()
    xs = xs.contiguous()
    ws = ws.contiguous()

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    _w8a8_gemm_kernel[grid](
        xq, wq, xs, ws, bias if bias is not None else ws, out,
        m, n, k, bucket,
        xq.stride(0), wq.stride(0), out.stride(0),
        XS_PER_TOKEN=xs.shape[0] != 1,
        HAS_BIAS=bias is not None, IS_INT8=qdtype == torch.int8,
    )
    return out.to(out_dtype)
