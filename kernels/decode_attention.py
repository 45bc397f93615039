"""Batch decode attention (one query token per sequence) over a bf16, fp16 or fp8 e4m3 KV cache.

An fp8 cache holds codes with one fp32 scale per KV head (value = code * scale). Decode reads
the whole cache once per step and does ~2 FLOPs per byte, so it is bound by memory bandwidth:
an fp8 cache halves the bytes. The Triton kernel splits each sequence's KV range across
programs ("flash-decoding") so that even batch 1 with 8 KV heads fills every SM, and each
program serves all query heads of its KV head, so a GQA group reads its KV tiles once.
"""
import math

import torch
import triton
import triton.language as tl

from kernels._launch import (cdiv, check_dtype, device_properties, first_config_only, graph_bench, interpreting, launch,
                             pdl_args, use_triton, wait_prior_grid)

Q_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KV_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn)
FP8_MAX = 448.0
LOG2E = 1.4426950408889634
# Split boundaries fall on multiples of this many positions, the smallest BLOCK_N, so every split
# but the last holds whole tiles of the BLOCK_N the autotuner may pick for its chunk (_fit_chunk;
# tests lower it to reach ragged splits).
SPLIT_ALIGN = 32
# Programs per SM the split count aims for: B * Hkv * num_splits >= WAVES * SMs keeps enough
# loads in flight to stream HBM at batch 1 (8 KV heads alone would occupy 8 of 132 SMs).
WAVES = 4
# Each split covers at least this many positions: shorter ones spend more on writing and
# reducing their partial results (G * (D + 2) fp32) than they read.
MIN_CHUNK = 128
MAX_SPLITS = 128
# Under the interpreter there is no SM count; 4 keeps the default heuristic splitting.
INTERPRETER_SMS = 4


def _check(q, k_cache, v_cache, seq_lens, k_scale, v_scale, sm_scale) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D [B, Hq, D], got shape {list(q.shape)}")
    check_dtype("q", q, *Q_DTYPES)
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be 4-D [B, Hkv, S_max, D], got shape {list(k_cache.shape)}")
    check_dtype("k_cache", k_cache, *KV_DTYPES)
    b, hq, d = q.shape
    _, hkv, _, _ = k_cache.shape
    if k_cache.shape[0] != b or k_cache.shape[3] != d:
        raise ValueError(f"k_cache must be [B={b}, Hkv, S_max, D={d}] (B and D from q), got {list(k_cache.shape)}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"q's {hq} heads must be a multiple of k_cache's {hkv} KV heads (GQA)")
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache must have k_cache's shape {list(k_cache.shape)}, got {list(v_cache.shape)}")
    check_dtype("v_cache", v_cache, k_cache.dtype)
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    if not fp8 and k_cache.dtype != q.dtype and q.dtype != torch.float32:
        raise ValueError(f"k_cache dtype {k_cache.dtype} must match q's {q.dtype} (or be float8_e4m3fn, or q fp32)")
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not fp8:
            if scale is not None:
                raise ValueError(f"{name} applies to an fp8 cache only; k_cache is {k_cache.dtype}")
            continue
        if scale is None:
            raise ValueError(f"{name} is required for an fp8 cache (one fp32 scale per KV head)")
        check_dtype(name, scale, torch.float32)
        if tuple(scale.shape) != (hkv,):
            raise ValueError(f"{name} must have shape [{hkv}] (one per KV head), got {list(scale.shape)}")
        if scale.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {scale.device}")
    if seq_lens.dim() != 1 or seq_lens.shape[0] != b:
        raise ValueError(f"seq_lens must have shape [{b}] (one length per sequence), got {list(seq_lens.shape)}")
    check_dtype("seq_lens", seq_lens, torch.int32)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens)):
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if sm_scale is not None and not (isinstance(sm_scale, (int, float)) and math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale!r}")


def _check_lengths(seq_lens: torch.Tensor, s_max: int) -> None:
    # Reads the lengths on the host: a device sync on CUDA, so only the reference and CPU
    # tensors check values; the kernel clamps them to [0, S_max] instead.
    lo, hi = int(seq_lens.min()), int(seq_lens.max())
    if lo < 0 or hi > s_max:
        raise ValueError(f"seq_lens must lie in [0, S_max={s_max}], got values from {lo} to {hi}")


def quantize_kv_reference(cache: torch.Tensor):
    """Quantizes a KV cache [B, Hkv, S, D] to fp8 e4m3 with one dynamic scale per KV head.

    Returns:
        ``(codes float8_e4m3fn [B, Hkv, S, D], scale fp32 [Hkv])`` with scale = amax / 448 over
        the head's whole cache (at least 1e-12), so value = code * scale.
    """
    if cache.dim() != 4:
        raise ValueError(f"cache must be 4-D [B, Hkv, S, D], got shape {list(cache.shape)}")
    check_dtype("cache", cache, *Q_DTYPES)
    # read BHSD ; write BHSD (fp8) + H
    xf = cache.float()
    amax = xf.abs().amax(dim=(0, 2, 3)) if xf.numel() else xf.new_zeros(cache.shape[1])
    scale = amax.clamp(min=1e-12) / torch.full_like(amax, FP8_MAX)
    codes = (xf / scale[None, :, None, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes, scale


def decode_attention_reference(q, k_cache, v_cache, seq_lens, *, k_scale=None, v_scale=None, sm_scale=None):
    """Pure-torch :func:`decode_attention` in fp32; the numerics every backend must reproduce.

    A sequence of length 0 gets a zero output.
    """
    _check(q, k_cache, v_cache, seq_lens, k_scale, v_scale, sm_scale)
    b, hq, d = q.shape
    hkv, s_max = k_cache.shape[1], k_cache.shape[2]
    _check_lengths(seq_lens, s_max)
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    out = torch.zeros(b, hq, d, dtype=torch.float32, device=q.device)
    # read BHq*D + 2 * sum(seq_lens) * Hkv * D ; write B*Hq*D — one sequence at a time, so the
    # fp32 copy of the cache stays one sequence long (134 MB at Hkv 8, S 32768, D 128).
    for i, n in enumerate(seq_lens.tolist()):
        if n == 0:
            continue
        k = k_cache[i, :, :n].float()
        v = v_cache[i, :, :n].float()
        if k_scale is not None:
            k = k * k_scale.float()[:, None, None]
            v = v * v_scale.float()[:, None, None]
        qi = q[i].float().reshape(hkv, g, d)  # query head h*g + j reads KV head h
        p = torch.softmax((qi @ k.transpose(1, 2)) * scale, dim=-1)
        out[i] = (p @ v).reshape(hq, d)
    return out.to(q.dtype)


def _config(block_n, warps, stages):
    return triton.Config({"BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# The first config that fits a chunk is the one _launch.ONE_CONFIG keeps (GPU correctness tests).
_CONFIGS = [_config(64, 4, 2)] + [
    _config(bn, w, s) for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3) if (bn, w, s) != (64, 4, 2)
]
_CONFIGS_INTERPRET = [_config(32, 4, 1)]


def _fit_chunk(configs, named_args, **kwargs):
    """Autotune pruning: no tile longer than a split's chunk (it would mask off most of each load)."""
    chunk = named_args["CHUNK"]
    fitting = [c for c in configs if c.kwargs["BLOCK_N"] <= max(chunk, 32)]
    return first_config_only(fitting or configs[:1], named_args, **kwargs)


@triton.autotune(
    configs=_CONFIGS_INTERPRET if interpreting() else _CONFIGS,
    key=["B_BUCKET", "NUM_KV_HEADS", "CHUNK", "HEAD_DIM", "GROUP", "KV_FP8", "Q_FP32", "DIRECT"],
    prune_configs_by={"early_config_prune": _fit_chunk},
    # A decode step's attention takes a few µs: timed from a CUDA graph, not the host's launch path.
    do_bench=graph_bench,
)
@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, lens_ptr, ks_ptr, vs_ptr, out_ptr, m_ptr, l_ptr, acc_ptr,
    qk_scale, S_MAX, CHUNK, B_BUCKET, NUM_KV_HEADS,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    KV_FP8: tl.constexpr, Q_FP32: tl.constexpr, DIRECT: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):
    # The cache holds this step's keys and values, written by the kernel before.
    wait_prior_grid(PDL)
    # Program (b, h, split): the GROUP query heads of KV head h over positions
    # [split * CHUNK, min((split + 1) * CHUNK, seq_len)) of sequence b.
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    seq_len = tl.maximum(tl.minimum(tl.load(lens_ptr + b), S_MAX), 0)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    heads = h * GROUP + offs_g
    mask_g = offs_g < GROUP
    # The group's queries as rows of one tile (padded to tl.dot's 16 rows): each K and V tile
    # is loaded once for all of them.
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=mask_g[:, None], other=0.0)
    # Logits in log2 units (exp2 is the hardware's exponential); the per-head fp8 K scale folds
    # into the same multiplier, so the K codes are used as they are.
    scale = qk_scale
    if KV_FP8:
        scale = scale * tl.load(ks_ptr + h)
    if KV_FP8 and not Q_FP32:
        # The dots run in fp16: e4m3 codes convert to it in one instruction a pair, to bf16 only
        # through fp32 (sm_90 SASS, bench/kernel_sass.py: 777 -> 567 instructions a loop
        # iteration at BLOCK_N 64). Each query row is scaled by the power of two that puts its
        # largest |value| in [2**14, 2**15), so fp16 holds a bf16 query with no overflow and more
        # mantissa than it has; the logits take the inverse power back.
        qf = q.to(tl.float32)
        e = ((tl.max(tl.abs(qf), axis=1).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        shift = tl.minimum(tl.maximum(14 - e, -126), 126)
        q = (qf * ((shift + 127) << 23).to(tl.float32, bitcast=True)[:, None]).to(tl.float16)
        scale = scale * ((127 - shift) << 23).to(tl.float32, bitcast=True)[:, None]
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + offs_n
        mask_n = cols < end
        # e4m3 codes convert exactly to fp16 / bf16 / fp32 (3 mantissa bits, exponent -9..8).
        kt = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None], mask=mask_n[None, :], other=0.0)
        kt = kt.to(q.dtype)
        if Q_FP32:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = tl.where(mask_n[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        v = v.to(q.dtype)
        if Q_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
        m_i = m_new
    if KV_FP8:
        # sum_n p_n * (code_n * v_scale) = v_scale * sum_n p_n * code_n: one multiply per output.
        acc = acc * tl.load(vs_ptr + h)

    if DIRECT:
        # One split: normalize and store; a length-0 sequence (l = 0, acc = 0) gets zeros.
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptrs = out_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=mask_g[:, None])
    else:
        # Partial (max, sum, unnormalized acc) per query head and split, [B, Hq, splits(, D)]; a
        # split past the sequence's end writes none (the reduction reads the live ones only).
        row = (b * NUM_KV_HEADS * GROUP + heads) * num_splits + split
        live = mask_g & (offs_g * 0 + start < seq_len)  # compared as a vector: the interpreter masks no scalar
        tl.store(m_ptr + row, m_i, mask=live)
        tl.store(l_ptr + row, l_i, mask=live)
        tl.store(acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=live[:, None])


@triton.jit
def _reduce_splits_kernel(m_ptr, l_ptr, acc_ptr, lens_ptr, out_ptr, NUM_HEADS, NUM_SPLITS, S_MAX, CHUNK,
                          stride_ob, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    wait_prior_grid(PDL)
    # Program (b, head): rescales each live split's partial to the global max and normalizes once.
    # The split count follows the cache's capacity; a decode step's sequence often fills a part of
    # it, and the splits past its end are neither written nor read.
    b = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    seq_len = tl.maximum(tl.minimum(tl.load(lens_ptr + b), S_MAX), 0)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_s = (offs_s < NUM_SPLITS) & (offs_s * CHUNK < seq_len)
    rows = (b * NUM_HEADS + head) * NUM_SPLITS + offs_s
    m = tl.load(m_ptr + rows, mask=mask_s, other=float("-inf"))
    l = tl.load(l_ptr + rows, mask=mask_s, other=0.0)
    m_max = tl.max(m, axis=0)
    # A live split whose positions were all masked would carry m = -inf, l = 0, acc = 0 and weigh
    # nothing. If no split is live (length 0) m_max is -inf: 0 stands in for it so that no
    # -inf - -inf = NaN arises, and the output is 0 / 1.
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)
    w = tl.math.exp2(m - m_max)
    acc = tl.load(acc_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=mask_s[:, None], other=0.0)
    total = tl.sum(w * l, axis=0)
    o = tl.sum(acc * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_ob + head * stride_oh + offs_d, o.to(out_ptr.dtype.element_ty))


def _sm_count(device: torch.device) -> int:
    return device_properties(device).multi_processor_count if device.type == "cuda" else INTERPRETER_SMS


def num_splits_for(b: int, hkv: int, s_max: int, device: torch.device) -> int:
    """Splits per sequence so that B * Hkv * splits programs fill the GPU (WAVES per SM), each
    split at least MIN_CHUNK positions. Decided from the cache capacity S_max, not the lengths:
    reading those would sync the host, and a split past a sequence's end exits at once."""
    want = cdiv(WAVES * _sm_count(device), max(1, b * hkv))
    return max(1, min(want, cdiv(s_max, MIN_CHUNK), MAX_SPLITS))


def decode_attention_triton(q, k_cache, v_cache, seq_lens, *, k_scale=None, v_scale=None, sm_scale=None,
                            num_splits: int | None = None):
    """Launches :func:`_decode_attention_kernel` (and the split reduction); same contract as
    :func:`decode_attention`. ``num_splits`` overrides :func:`num_splits_for` (tests, bench)."""
    _check(q, k_cache, v_cache, seq_lens, k_scale, v_scale, sm_scale)
    b, hq, d = q.shape
    hkv, s_max = k_cache.shape[1], k_cache.shape[2]
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"q's head dim must be a power of two from 16 to 256 for the Triton kernel, got {d}")
    if not q.is_cuda:
        _check_lengths(seq_lens, s_max)
    if b == 0 or hq == 0:
        return q.new_empty(b, hq, d)
    if q.stride(2) != 1:
        q = q.contiguous()
    if k_cache.stride(3) != 1:
        k_cache = k_cache.contiguous()
    if v_cache.stride(3) != 1:
        v_cache = v_cache.contiguous()
    seq_lens = seq_lens.contiguous()
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    group = hq // hkv
    if num_splits is None:
        num_splits = num_splits_for(b, hkv, s_max, q.device)
    if num_splits < 1:
        raise ValueError(f"num_splits must be at least 1, got {num_splits}")
    chunk = max(1, cdiv(cdiv(max(s_max, 1), num_splits), SPLIT_ALIGN) * SPLIT_ALIGN)
    num_splits = max(1, cdiv(s_max, chunk))
    direct = num_splits == 1
    out = torch.empty(b, hq, d, dtype=q.dtype, device=q.device)
    if direct:
        m = l = acc = out  # unused
    else:
        m = torch.empty(b, hq, num_splits, dtype=torch.float32, device=q.device)
        l = torch.empty(b, hq, num_splits, dtype=torch.float32, device=q.device)
        acc = torch.empty(b, hq, num_splits, d, dtype=torch.float32, device=q.device)
    scale = (1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)) * LOG2E
    ks = k_scale.contiguous() if fp8 else seq_lens
    vs = v_scale.contiguous() if fp8 else seq_lens
    launch(
        _decode_attention_kernel, (b, hkv, num_splits),
        q, k_cache, v_cache, seq_lens, ks, vs, out, m, l, acc,
        scale, s_max, chunk, triton.next_power_of_2(b), hkv,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=d,
        KV_FP8=fp8, Q_FP32=q.dtype == torch.float32, DIRECT=direct, **pdl_args(q.device),
    )
    if not direct:
        launch(
            _reduce_splits_kernel, (b, hq),
            m, l, acc, seq_lens, out, hq, num_splits, s_max, chunk, out.stride(0), out.stride(1),
            HEAD_DIM=d, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), num_warps=4, **pdl_args(q.device),
        )
    return out


def decode_attention(q, k_cache, v_cache, seq_lens, *, k_scale=None, v_scale=None, sm_scale=None,
                     backend: str = "auto"):
    """Attention of one new query token per sequence over its cached keys and values.

    Args:
        q: [B, Hq, D] queries (fp32, fp16 or bf16).
        k_cache, v_cache: [B, Hkv, S_max, D], bf16 / fp16 (q's dtype, or any with fp32 q) or
            float8_e4m3fn codes; Hq a multiple of Hkv, query head i reads KV head i // (Hq / Hkv).
        seq_lens: int32 [B]; sequence b attends to positions < seq_lens[b] (0 gives zeros). The
            reference and CPU tensors check 0 <= seq_len <= S_max; the CUDA kernel clamps.
        k_scale, v_scale: fp32 [Hkv] per-head scales of an fp8 cache (value = code * scale);
            None for 16-bit caches.
        sm_scale: logit multiplier, 1 / sqrt(D) when None.
        backend: ``auto``, ``triton`` or ``reference`` (see :func:`kernels._launch.use_triton`).

    Returns:
        [B, Hq, D] in q's dtype.
    """
    if use_triton(q, backend):
        return decode_attention_triton(q, k_cache, v_cache, seq_lens, k_scale=k_scale, v_scale=v_scale,
                                       sm_scale=sm_scale)
    return decode_attention_reference(q, k_cache, v_cache, seq_lens, k_scale=k_scale, v_scale=v_scale,
                                      sm_scale=sm_scale)
