"""The W8A8 GEMM kernel shared by fp8 e4m3 and int8: the two differ only in the accumulator type."""
import torch
import triton
import triton.language as tl
from triton.runtime import _allocation

from kernels import _launch
from kernels._launch import (cdiv, check_2d, check_dtype, check_shape, count_in_split, device_properties,
                             first_config_only, gemv_early_dependents, graph_bench, interpreting, launch,
                             launch_dependents, m_bucket, pdl_args, split_k_locks, sum_splits, wait_prior_grid,
                             zero_output)

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


@triton.jit
def _token_scales(xs_ptr, offs_m, mask_m, XS_PER_TOKEN: tl.constexpr, BLOCK_M: tl.constexpr):
    """The activation scale of each row: per token, or the one per-tensor scale broadcast."""
    if XS_PER_TOKEN:
        xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
    else:
        xs = tl.load(xs_ptr + tl.zeros((BLOCK_M,), dtype=tl.int32))
    return xs


@triton.jit
def _scaled_tile(acc, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, mask_m, mask_n, add_bias,
                 XS_PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Epilogue of an [M, N] tile: per-token x per-channel scales on the fp32 (or exact int32) sum,
    then the bias where ``add_bias`` (one split of a split-K tile adds it)."""
    xs = _token_scales(xs_ptr, offs_m, mask_m, XS_PER_TOKEN, BLOCK_M)
    ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        if add_bias:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    return out


@triton.jit
def _store_or_add(out_ptrs, out, mask, SPLIT_K: tl.constexpr):
    """Writes the scaled tile; split-K programs add theirs (the scales are linear) into the zeroed fp32 output."""
    if SPLIT_K == 1:
        tl.store(out_ptrs, out.to(out_ptrs.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, out, mask=mask)


def _config(bm, bn, bk, warps, stages, split_k=1, group_m=8):
    # Split-K programs add fp32 partial sums with atomics into an output zeroed first.
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "SPLIT_K": split_k},
                         num_warps=warps, num_stages=stages, pre_hook=zero_output if split_k > 1 else None)


# Configs by M bucket. Up to SPLIT_MAX_M tokens the GEMM streams weights: narrow N tiles and
# split K give every SM several programs (N = 8192 / 64 = 128 tiles alone under-fill 132 SMs,
# measured 60-70 µs at M = 64..128 vs _scaled_mm's 40). Larger M is tensor-core bound:
# 128x256 tiles with 8 warps keep two warpgroups of wgmma busy. At 8192^3 grouping 16 row-tiles
# per weight column-tile (L2 reuse) beat 8 by 10% for fp8 and 5% for int8 (bench/w8a8_sweep.py,
# bench/results/w8a8-sweep-h100.json).
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
    _config(128, 256, 128, 8, 3, group_m=16),
    _config(128, 256, 128, 8, 3),
    _config(128, 256, 128, 8, 4),
    _config(256, 128, 128, 8, 3),
    _config(128, 128, 128, 8, 4),
    _config(256, 128, 128, 8, 4),
    _config(256, 128, 128, 8, 3, group_m=16),
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
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
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

    mask_m = offs_m < M
    mask_n = offs_n < N
    out = _scaled_tile(acc, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, mask_m, mask_n, pid_k == 0, XS_PER_TOKEN,
                       HAS_BIAS, BLOCK_M)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    _store_or_add(out_ptrs, out, mask, SPLIT_K)


def _persistent_config(bm, bn, bk, warps, stages, group_m=8, flatten=True, warp_specialize=False, tma_store=False):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "FLATTEN": flatten,
                          "WARP_SPECIALIZE": warp_specialize, "TMA_STORE": tma_store},
                         num_warps=warps, num_stages=stages)


# Above SPLIT_MAX_M tokens on sm_90, a persistent kernel reading by TMA. Against the tiled kernel's
# best configs (do_bench µs on the H100, python bench/w8a8_sweep.py --persistent,
# bench/results/w8a8-persistent-sweep-h100.json), fp8: 8192^3 820 -> 769 (cuBLAS 820), 2048 x
# 4096 x 4096 55.1 -> 52.9 (53.6), 2048 x 14336 x 4096 193.8 -> 183.0 (176.1), within 1% of it
# on three more shapes; int8 7-11% faster on all six. Storing the output tile by TMA and
# warp-specialized loops (--persistent --more, w8a8-persistent-more-sweep-h100.json) each won some
# shapes: the configs below came within 4% of each shape's best on average. Under eager timing the
# host's launch cost (~100 µs, Triton's autotuner and launcher most of it) can exceed the L2 flush
# before each call and show as kernel time at ~50 µs shapes (bench/launch_overhead.py).
# fp8 takes one of them, not tuned: by CUDA-graph time, one GEMM after another (as the runtime's
# graphs replay them), it was the fastest of the three the autotuner had picked on six of seven
# shapes at M >= 2048 and 1.2% behind on the seventh (python bench/w8a8_sweep.py --persistent-graph
# --picks, bench/results/w8a8-persistent-graph-picks-h100.json: 2048 x 4096 x 4096 55.4 µs
# against 57.8 for the autotuner's pick there, 8192^3 842 against 860), and the fastest or within
# 1% in the two runs before (w8a8-persistent-graph{,-extra}-h100.json). bench/kernels.py, on the
# next lease, read 2048 x 4096 x 4096 2-3% slower in it than the run before had in the tuned pick
# (kernels-w8a8-fp8-config-h100.json against kernels-w8a8-nopdl-h100.json, bf16 equal in both):
# at that shape the ranking is within the noise. Single measurements there move ~2 µs with their
# place in a run, the clock swinging under the board's power cap (bench/gemm_power.py); timed in
# interleaved rounds this config read 55.8-57.0 µs by graph, through the launcher or launched
# directly (w8a8-timers-h100.json, kernels-w8a8-rounds{,2}-h100.json). int8 is tuned.
FP8_PERSISTENT = _persistent_config(128, 256, 128, 8, 3, group_m=16, tma_store=True)
_CONFIGS_PERSISTENT = [
    _persistent_config(128, 256, 128, 8, 4),
    FP8_PERSISTENT,
    _persistent_config(128, 256, 128, 8, 3, tma_store=True),
    _persistent_config(256, 128, 128, 8, 3),
    _persistent_config(128, 256, 128, 8, 3, group_m=16, flatten=False, warp_specialize=True, tma_store=True),
    _persistent_config(128, 256, 64, 8, 5),
]
_CONFIGS_PERSISTENT_INTERPRET = [_persistent_config(32, 32, 32, 4, 1, group_m=2)]


def _prune_persistent(configs, named_args, **kwargs):
    """fp8: FP8_PERSISTENT, unless one config is forced (kernels._launch.only_config); int8: all."""
    if len(configs) > 1 and not interpreting() and not {**named_args, **kwargs}.get("IS_INT8", False):
        configs = [FP8_PERSISTENT]
    return first_config_only(configs, named_args, **kwargs)


@triton.autotune(
    configs=_CONFIGS_PERSISTENT_INTERPRET if interpreting() else _CONFIGS_PERSISTENT,
    key=["M_BUCKET", "N", "K"],
    prune_configs_by={"early_config_prune": _prune_persistent},
)
@triton.jit
def _w8a8_persistent_kernel(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K, M_BUCKET, stride_xm, stride_wn, stride_om,
    XS_PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr, IS_INT8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr, FLATTEN: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, TMA_STORE: tl.constexpr,
    OUT_ALIGNED: tl.constexpr, PDL: tl.constexpr,
):
    # One program per SM walks the output tiles NUM_SMS apart, in the grouped order, reading both
    # operands by TMA (rows and K past the end read as zeros). Flattened, the tile and K loops are
    # one software-pipelined loop, so a tile's epilogue overlaps the next tile's first loads, and
    # no wave of tiles ends with SMs idle; warp-specialized (not flattened, as Triton asks on
    # Hopper), load and MMA warps run apart. TMA_STORE writes the tile by TMA where the output's
    # rows are 16-byte aligned (OUT_ALIGNED). The descriptors are made here, on the device: made
    # on the host, each launch encoded them in Python, ~100 µs of host time a call, which eager
    # timing (do_bench) measured as GPU idle. They are written to a scratch buffer from torch's
    # allocator, which may be memory the kernel before this one still uses: made after the wait.
    wait_prior_grid(PDL)
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K])
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_pid_in_group = GROUP_M * num_pid_n
    if TMA_STORE and OUT_ALIGNED:
        out_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[stride_om, 1],
                                             block_shape=[BLOCK_M, BLOCK_N])
    for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN,
                         warp_specialize=WARP_SPECIALIZE):
        group_id = tile // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((tile % num_pid_in_group) % group_size_m)
        pid_n = (tile % num_pid_in_group) // group_size_m
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if IS_INT8 else tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            b = w_desc.load([pid_n * BLOCK_N, ki * BLOCK_K])
            if IS_INT8:
                acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, b.T, acc)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        out = _scaled_tile(acc, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, mask_m, mask_n, True, XS_PER_TOKEN,
                           HAS_BIAS, BLOCK_M)
        if TMA_STORE and OUT_ALIGNED:
            out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], out.to(out_ptr.dtype.element_ty))
        else:
            out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def tma_ready(xq: torch.Tensor, wq: torch.Tensor) -> bool:
    """Whether TMA descriptors can address both operands: 16-byte aligned bases and row strides."""
    return all(t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0
               for t in (xq, wq))


def _descriptor_scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Device-made TMA descriptors live in a scratch buffer that Triton asks an allocator for at
    launch; this sets one (torch's caching allocator, so CUDA graphs capture it) unless the
    application has set its own."""
    current = getattr(_allocation, "_allocator", None)
    if current is None or current.get() is getattr(_allocation, "_NULL_ALLOCATOR", None):
        triton.set_allocator(_descriptor_scratch)


# Paths by token count: up to GEMV_MAX_M tokens a CUDA-core GEMV; up to SWAP_MAX_M the
# tensor-core kernel with swapped operands (weights on the MMA's 64-wide side, the tokens on its
# narrow side); above, the tiled GEMM. Measured on H100 at M = 1 (CUDA graph, 8192 x 8192): int8
# GEMV 26.4 µs vs swapped 29.3; fp8 GEMV 32.2 vs swapped 28.9 (converting fp8 to fp32 on CUDA
# cores costs more than the MMA), so only int8 takes the GEMV.
GEMV_MAX_M = {torch.int8: 1, torch.float8_e4m3fn: 0}
SWAP_MAX_M = 128
PATHS = ("auto", "gemv", "swap", "tiled", "persistent")


def _gemv_config(bn, bk, warps, stages):
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


_CONFIGS_GEMV = [
    _gemv_config(16, 512, 4, 2),
    _gemv_config(16, 256, 2, 3),
    _gemv_config(32, 256, 4, 3),
    _gemv_config(8, 512, 2, 3),
    _gemv_config(32, 512, 8, 2),
    _gemv_config(16, 1024, 8, 2),
    _gemv_config(64, 256, 8, 2),
    _gemv_config(8, 1024, 4, 2),
]
_CONFIGS_GEMV_INTERPRET = [_gemv_config(16, 64, 4, 1)]


@triton.autotune(
    configs=_CONFIGS_GEMV_INTERPRET if interpreting() else _CONFIGS_GEMV,
    key=["BLOCK_M", "N", "K"],
    prune_configs_by={"early_config_prune": first_config_only},
)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _w8a8_gemv_kernel(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_om,
    XS_PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr, IS_INT8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    EARLY_DEPENDENTS: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL, EARLY_DEPENDENTS)
    # One program owns BLOCK_N weight rows over all of K: each row is read as contiguous
    # BLOCK_K-byte runs, multiplied with the BLOCK_M (<= 8) token rows and reduced in registers.
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_w = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    rows_x = tl.where(mask_m, offs_m, 0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + rows_x[:, None] * stride_xm + offs_k[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if IS_INT8 else tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs, eviction_policy="evict_first")
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        else:
            w = tl.load(w_ptrs, mask=offs_k[None, :] < K - k0, other=0.0, eviction_policy="evict_first")
            x = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < K - k0), other=0.0)
        if IS_INT8:
            # int8 x int8 products summed in int32 are exact, as the tensor-core path's are.
            acc += tl.sum(w.to(tl.int32)[None, :, :] * x.to(tl.int32)[:, None, :], axis=2)
        else:
            acc += tl.sum(w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :], axis=2)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K

    if not EARLY_DEPENDENTS:
        launch_dependents(PDL)
    mask_n = offs_n < N
    out = _scaled_tile(acc, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, mask_m, mask_n, True, XS_PER_TOKEN, HAS_BIAS,
                       BLOCK_M)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _swap_config(bn, bk, warps, stages, split_k=1):
    # BLOCK_M is not tuned: it is the token count rounded up to a power of two (at least 16).
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k}, num_warps=warps, num_stages=stages)


# Where the output has fewer 64-row tiles than the GPU has SMs, the autotuner also tries split-K
# (split programs reduce serially, in the same launch: kernels._launch.count_in_split); otherwise
# one program per output tile stores out_dtype directly.
_CONFIGS_SWAP_SPLIT = [
    _swap_config(64, 256, 4, 4, split_k=4),
    _swap_config(64, 256, 4, 4, split_k=2),
    _swap_config(64, 128, 4, 5, split_k=4),
    _swap_config(128, 128, 4, 4, split_k=2),
    _swap_config(64, 256, 4, 4, split_k=8),
]
_CONFIGS_SWAP_DIRECT = [
    _swap_config(64, 256, 4, 4),
    _swap_config(64, 256, 4, 5),
    _swap_config(64, 128, 4, 6),
    _swap_config(128, 256, 8, 3),
    _swap_config(128, 128, 4, 4),
    _swap_config(32, 256, 4, 4),
    _swap_config(64, 512, 4, 3),
]
_CONFIGS_SWAP_INTERPRET = [_swap_config(32, 32, 4, 1, split_k=2)]
_CONFIGS_SWAP_DIRECT_INTERPRET = [_swap_config(32, 32, 4, 1)]


def swap_split_k(n: int, device: torch.device | None = None) -> bool:
    """Whether the swapped kernel may split K (its autotuner then weighs split and unsplit
    configs): the output has fewer 64-row tiles than the GPU has SMs."""
    return cdiv(n, 64) < _sm_count(device)


def _sm_count(device: torch.device | None = None) -> int:
    # The launcher passes its tensors' device: torch.cuda.is_available() costs µs a call, and the
    # launch path's host time is the call's time at prefill sizes when it runs eagerly.
    on_cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    if on_cuda:
        return device_properties(device).multi_processor_count
    return 132  # the H100's, so the interpreter takes the same branch as the GPU would


@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _w8a8_swap_body(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_om,
    XS_PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr, IS_INT8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr,
):
    # The loop's software pipeline loads weights and activations together, so the wait comes first.
    wait_prior_grid(PDL)
    # out^T [N, M] = W [N, K] x^T [K, M]: the weight tile is the MMA's wide left operand and all
    # BLOCK_M tokens its narrow right one, so one pass streams the weights and no MMA row is
    # padding. Both operands are read K-major, as they are stored (what fp8 wgmma wants).
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_w = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    rows_x = tl.where(mask_m, offs_m, 0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    steps_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
    k_begin = pid_k * steps_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + steps_per_split * BLOCK_K, K)
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + (k_begin + offs_k)[None, :]
    x_ptrs = x_ptr + rows_x[None, :] * stride_xm + (k_begin + offs_k)[:, None]

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32 if IS_INT8 else tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            a = tl.load(w_ptrs)
            b = tl.load(x_ptrs)
        else:
            a = tl.load(w_ptrs, mask=offs_k[None, :] < K - k0, other=0.0)
            b = tl.load(x_ptrs, mask=offs_k[:, None] < K - k0, other=0.0)
        if IS_INT8:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K

    mask_n = offs_n < N
    xs = _token_scales(xs_ptr, offs_m, mask_m, XS_PER_TOKEN, BLOCK_M)
    ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * ws[:, None] * xs[None, :]
    if HAS_BIAS:
        if pid_k == 0:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
    mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        parts = part_ptr + offs_m[None, :] * N + offs_n[:, None]
        if count_in_split(out, parts, mask, M * N, lock_ptr + pid_n, pid_k) == SPLIT_K - 1:
            total = sum_splits(parts, mask, M * N, lock_ptr + pid_n, SPLIT_K)
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)


# Decode-sized launches take a few µs: timed from a CUDA graph (graph_bench), not the host.
_w8a8_swap_kernel = triton.autotune(
    configs=_CONFIGS_SWAP_INTERPRET if interpreting() else _CONFIGS_SWAP_SPLIT + _CONFIGS_SWAP_DIRECT,
    key=["BLOCK_M", "N", "K"], prune_configs_by={"early_config_prune": first_config_only}, do_bench=graph_bench,
)(_w8a8_swap_body)
_w8a8_swap_direct_kernel = triton.autotune(
    configs=_CONFIGS_SWAP_DIRECT_INTERPRET if interpreting() else _CONFIGS_SWAP_DIRECT,
    key=["BLOCK_M", "N", "K"], prune_configs_by={"early_config_prune": first_config_only}, do_bench=graph_bench,
)(_w8a8_swap_body)
# What the launcher sizes a split launch's partials and count words by, whichever config wins.
_SWAP_MAX_SPLIT = max(c.kwargs["SPLIT_K"] for c in _w8a8_swap_kernel.configs)
_SWAP_MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _w8a8_swap_kernel.configs)


def w8a8_path(m: int, qdtype: torch.dtype, device: torch.device | None = None) -> str:
    """The kernel the launcher runs for ``m`` tokens of ``qdtype`` (int8 or fp8 e4m3) on ``device``
    (the current CUDA device if None); ``persistent`` becomes ``tiled`` where TMA cannot address the
    operands (see :func:`tma_ready`)."""
    if m <= GEMV_MAX_M[qdtype]:
        return "gemv"
    if m <= SWAP_MAX_M:
        return "swap"
    return "persistent" if _tma_device(device) else "tiled"


def _tma_device(device: torch.device | None = None) -> bool:
    # TMA is sm_90's; the CPU interpreter runs the descriptor loads too.
    if interpreting():
        return True
    on_cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    return on_cuda and device_properties(device).major >= 9


def w8a8_gemm_triton(xq, xs, wq, ws, bias, out_dtype, qdtype: torch.dtype, *, path: str = "auto"):
    """Launches the W8A8 kernel for ``xq``'s token count after validating the contract (``path``
    forces one: ``gemv`` up to 8 tokens, ``swap`` up to 256, ``tiled`` or ``persistent``; for
    bench/kernels.py)."""
    check_w8a8(xq, xs, wq, ws, bias, out_dtype, qdtype)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    m, k = xq.shape
    n = wq.shape[0]
    if m == 0 or n == 0 or k == 0:
        out = torch.zeros(m, n, dtype=out_dtype, device=xq.device)
        return out + bias.to(out_dtype) if bias is not None else out
    path = w8a8_path(m, qdtype, xq.device) if path == "auto" else path
    if path == "gemv" and m > 8:
        raise ValueError(f"path='gemv' serves at most 8 tokens, got M={m}")
    if path == "swap" and m > 256:
        raise ValueError(f"path='swap' serves at most 256 tokens, got M={m}")
    xq = xq if xq.stride(1) == 1 else xq.contiguous()
    wq = wq if wq.stride(1) == 1 else wq.contiguous()
    xs = xs.contiguous()
    ws = ws.contiguous()
    flags = dict(XS_PER_TOKEN=xs.shape[0] != 1, HAS_BIAS=bias is not None, IS_INT8=qdtype == torch.int8)
    bias_arg = bias if bias is not None else ws
    if path == "gemv":
        out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
        launch(
            _w8a8_gemv_kernel, lambda meta: (cdiv(n, meta["BLOCK_N"]),),
            xq, wq, xs, ws, bias_arg, out, m, n, k, xq.stride(0), wq.stride(0), out.stride(0),
            BLOCK_M=triton.next_power_of_2(m), EARLY_DEPENDENTS=gemv_early_dependents(), **flags,
            **pdl_args(xq.device),
        )
        return out
    if path == "swap":
        out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
        if swap_split_k(n, xq.device):
            # Each split's fp32 partials get a slice; the count words are shared (see split_k_locks).
            kernel = _w8a8_swap_kernel
            parts = torch.empty(_SWAP_MAX_SPLIT, m, n, dtype=torch.float32, device=xq.device)
            locks = split_k_locks(xq.device, cdiv(n, _SWAP_MIN_BLOCK_N))
        else:
            kernel, parts, locks = _w8a8_swap_direct_kernel, out, out
        launch(
            kernel, lambda meta: (cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"]),
            xq, wq, xs, ws, bias_arg, out, parts, locks, m, n, k, xq.stride(0), wq.stride(0), out.stride(0),
            BLOCK_M=max(16, triton.next_power_of_2(m)), **flags, **pdl_args(xq.device),
        )
        return out
    bucket = m_bucket(m)
    if path == "persistent" and tma_ready(xq, wq):
        out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
        sms = _sm_count(xq.device)

        def grid(meta):
            return (min(sms, cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"])),)

        if xq.is_cuda:
            _ensure_allocator()
        # Without PDL: replayed from CUDA graphs on the H100, one GEMM after another, the configs ran
        # faster without it in 20 of 24 pairs at 2048 x 14336 x 4096 and 2048 x 8192 x 28672 (up
        # to 4.7%, 1.8% slower at worst) and in 7 of 12 at 2048 x 4096 x 4096 (within 4.4% either
        # way; python bench/w8a8_sweep.py --persistent-graph, two runs,
        # bench/results/w8a8-persistent-graph{,-extra}-h100.json). These launches last 50 µs or
        # more: the ~1 µs an early launch can hide is within their noise.
        launch(
            _w8a8_persistent_kernel, grid,
            xq, wq, xs, ws, bias_arg, out, m, n, k, bucket, xq.stride(0), wq.stride(0), out.stride(0), NUM_SMS=sms,
            OUT_ALIGNED=(n * out.element_size()) % 16 == 0, PDL=False, **flags,
        )
        return out
    # Split-K candidates accumulate in fp32; the cast afterwards is one small launch.
    out = torch.empty(m, n, dtype=torch.float32 if bucket <= SPLIT_MAX_M else out_dtype, device=xq.device)

    def grid(meta):
        return (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    launch(
        _w8a8_gemm_kernel, grid,
        xq, wq, xs, ws, bias_arg, out,
        m, n, k, bucket,
        xq.stride(0), wq.stride(0), out.stride(0), **flags, **pdl_args(xq.device),
    )
    return out.to(out_dtype)
