"""Batch decode attention (one query token per sequence) over a bf16, fp16 or fp8 e4m3 KV cache.

An fp8 cache holds codes with one fp32 scale per KV head (value = code * scale). Decode reads
the whole cache once per step and does ~2 FLOPs per byte, so it is bound by memory bandwidth:
an fp8 cache halves the bytes. The Triton kernel splits each sequence's KV range across
programs ("flash-decoding") so that even batch 1 with 8 KV heads fills every SM, and each
program serves all query heads of its KV head, so a GQA group reads its KV tiles once; the last
split of a KV head to finish reduces the splits' partials (no second kernel).

:func:`decode_attention_update` is a whole decode step's attention in the same kernel: it also
rotates the query and the new key (RoPE), writes the new key and value into a 16-bit cache and
counts the write, which a Llama layer otherwise does in several element-wise kernels first.
"""
import math

import torch
import triton
import triton.language as tl

from kernels._launch import (cdiv, check_dtype, device_properties, first_config_only, graph_bench, interpreting, launch,
                             pdl_args, split_k_locks, use_triton, wait_prior_grid)

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
# fp32 elements of split partials the last split of a KV head loads at once to reduce them.
REDUCE_TILE = 8192
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
    if seq_lens is not None and (seq_lens.dim() != 1 or seq_lens.shape[0] != b):
        raise ValueError(f"seq_lens must have shape [{b}] (one length per sequence), got {list(seq_lens.shape)}")
    if seq_lens is not None:
        check_dtype("seq_lens", seq_lens, torch.int32)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if sm_scale is not None and not (isinstance(sm_scale, (int, float)) and math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale!r}")


def _check_lengths(seq_lens: torch.Tensor, s_max: int) -> None:
    # Reads the lengths on the host: a device sync on CUDA, so only the reference and CPU
    # tensors check values; the kernel clamps them to [0, S_max] instead.
    lo, hi = int(seq_lens.min()), int(seq_lens.max())
    if lo < 0 or hi > s_max:
        raise ValueError(f"seq_lens must lie in [0, S_max={s_max}], got values from {lo} to {hi}")


def _check_update(q, k, v, cos, sin, k_cache, v_cache, positions, sm_scale, fill) -> None:
    if k_cache.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"k_cache must be bfloat16 or float16 to take the step's write, got {k_cache.dtype}")
    _check(q, k_cache, v_cache, None, None, None, sm_scale)  # positions are checked below
    b, _, d = q.shape
    hkv = k_cache.shape[1]
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in the head dim to take the step's write")
    if d % 2:
        raise ValueError(f"q's head dim must be even for RoPE, got {d}")
    for name, t in (("k", k), ("v", v)):
        if t.dim() != 3 or tuple(t.shape) != (b, hkv, d):
            raise ValueError(f"{name} must have shape [{b}, {hkv}, {d}] (B, Hkv, D), got {list(t.shape)}")
        check_dtype(name, t, q.dtype)
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 2 or tuple(t.shape) != (b, d):
            raise ValueError(f"{name} must have shape [{b}, {d}] (B, D), got {list(t.shape)}")
        check_dtype(name, t, *Q_DTYPES)
    if positions.dim() != 1 or positions.shape[0] not in (1, b):
        raise ValueError(f"positions must have shape [{b}] or [1], got {list(positions.shape)}")
    check_dtype("positions", positions, torch.int32, torch.int64)
    if fill is not None:
        if fill.numel() != 1 or fill.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"fill must be one int32 or int64 count, got {fill.dtype} of shape {list(fill.shape)}")
    for name, t in (("k", k), ("v", v), ("cos", cos), ("sin", sin), ("positions", positions), ("fill", fill)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")


def _check_positions(positions: torch.Tensor, s_max: int) -> None:
    # As _check_lengths: a host read, so CPU tensors and the reference only; the kernel skips a
    # write out of range and clamps the length.
    lo, hi = int(positions.min()), int(positions.max())
    if lo < 0 or hi >= s_max:
        raise ValueError(f"positions must lie in [0, S_max={s_max}), got values from {lo} to {hi}")


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [B, H, D] by cos, sin [B, D], in fp32 with one rounding to x's dtype."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos.float()[:, None] + rotated * sin.float()[:, None]).to(x.dtype)


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


def decode_attention_update_reference(q, k, v, cos, sin, k_cache, v_cache, positions, *, sm_scale=None,
                                      fill=None):
    """Pure-torch :func:`decode_attention_update`: RoPE, the cache write, then
    :func:`decode_attention_reference` over positions up to the new one."""
    _check_update(q, k, v, cos, sin, k_cache, v_cache, positions, sm_scale, fill)
    _check_positions(positions, k_cache.shape[2])
    b = q.shape[0]
    pos = positions.long().expand(b)
    rows = torch.arange(b, device=q.device)
    k_cache[rows, :, pos] = rope_reference(k, cos, sin).to(k_cache.dtype)
    v_cache[rows, :, pos] = v.to(v_cache.dtype)
    if fill is not None:
        fill.add_(1)
    return decode_attention_reference(rope_reference(q, cos, sin), k_cache, v_cache, (pos + 1).to(torch.int32),
                                      sm_scale=sm_scale)


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
    key=["B_BUCKET", "NUM_KV_HEADS", "CHUNK", "HEAD_DIM", "GROUP", "KV_FP8", "Q_FP32", "DIRECT", "UPDATE"],
    prune_configs_by={"early_config_prune": _fit_chunk},
    # A decode step's attention takes a few µs: timed from a CUDA graph, not the host's launch path.
    do_bench=graph_bench,
    # Tuning runs the kernel once per config and timing; an UPDATE launch counts its write into
    # the fill each time, so the fill is put back after each.
    restore_value=["fill_ptr"],
)
@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, lens_ptr, ks_ptr, vs_ptr, out_ptr, m_ptr, l_ptr, acc_ptr, lock_ptr,
    kn_ptr, vn_ptr, cos_ptr, sin_ptr, fill_ptr,
    qk_scale, S_MAX, CHUNK, B_BUCKET, NUM_KV_HEADS, stride_lb,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_knb, stride_knh, stride_vnb, stride_vnh, stride_cb,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    KV_FP8: tl.constexpr, Q_FP32: tl.constexpr, DIRECT: tl.constexpr, UPDATE: tl.constexpr, HAS_FILL: tl.constexpr,
    BLOCK_GR: tl.constexpr, SPLIT_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):
    # Without UPDATE the cache holds this step's keys and values, written by the kernel before;
    # with it, q, k and v come from the kernel before.
    wait_prior_grid(PDL)
    # Program (b, h, split): the GROUP query heads of KV head h over positions
    # [split * CHUNK, min((split + 1) * CHUNK, seq_len)) of sequence b.
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    # UPDATE: lens_ptr holds the new token's position (a stride of 0 broadcasts one to the batch).
    length = tl.load(lens_ptr + b * stride_lb).to(tl.int64)
    if UPDATE:
        length = length + 1
    seq_len = tl.maximum(tl.minimum(length, S_MAX), 0).to(tl.int32)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    heads = h * GROUP + offs_g
    mask_g = offs_g < GROUP
    # The group's queries as rows of one tile (padded to tl.dot's 16 rows): each K and V tile
    # is loaded once for all of them.
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh
    q = tl.load(q_rows + offs_d[None, :], mask=mask_g[:, None], other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    if UPDATE:
        # RoPE (rotate-half): x * cos + (-x[d + D/2] | x[d - D/2]) * sin, in fp32, one rounding.
        partner = (offs_d + HEAD_DIM // 2) % HEAD_DIM
        sign = tl.where(offs_d < HEAD_DIM // 2, -1.0, 1.0)
        cos = tl.load(cos_ptr + b * stride_cb + offs_d).to(tl.float32)
        sin = tl.load(sin_ptr + b * stride_cb + offs_d).to(tl.float32) * sign
        q_half = tl.load(q_rows + partner[None, :], mask=mask_g[:, None], other=0.0).to(tl.float32)
        q = (q.to(tl.float32) * cos[None, :] + q_half * sin[None, :]).to(q_ptr.dtype.element_ty)
        # The split holding the new position writes its key (rotated) and value there, then
        # reads them back with the rest (the barrier makes every thread's store visible to all).
        pos = length - 1
        writer = (pos >= 0) & (pos < S_MAX) & (pos // CHUNK == split)
        write = (offs_d * 0 + writer.to(tl.int32)) != 0  # a vector: the interpreter masks no scalar
        k_new = tl.load(kn_ptr + b * stride_knb + h * stride_knh + offs_d, mask=write, other=0.0).to(tl.float32)
        k_half = tl.load(kn_ptr + b * stride_knb + h * stride_knh + partner, mask=write, other=0.0).to(tl.float32)
        k_rot = k_new * cos + k_half * sin
        tl.store(k_base + pos * stride_ks + offs_d, k_rot.to(k_ptr.dtype.element_ty), mask=write)
        v_new = tl.load(vn_ptr + b * stride_vnb + h * stride_vnh + offs_d, mask=write, other=0.0)
        tl.store(v_base + pos * stride_vs + offs_d, v_new.to(v_ptr.dtype.element_ty), mask=write)
        if HAS_FILL:
            # The cache's count of written positions, one more a step, by one program.
            one = tl.arange(0, 2)
            first = (one + b + h + split) == 0  # program (0, 0, 0), lane 0
            fill = tl.load(fill_ptr + one, mask=first, other=0)
            tl.store(fill_ptr + one, fill + 1, mask=first)
        tl.debug_barrier()
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
        # Partial (max, sum, unnormalized acc) per query head and split, [B, Hq, splits(, D)],
        # from each live split: those that start before the sequence's end, and split 0 (so a
        # length-0 sequence too gets its zeros). The rest exit; the cache's capacity sets the split
        # count, and a decode step's sequence often fills a part of it.
        live_splits = tl.maximum(tl.cdiv(seq_len, CHUNK), 1)
        row = (b * NUM_KV_HEADS * GROUP + heads) * num_splits + split
        live = mask_g & (offs_g * 0 + split < live_splits)  # compared as a vector (see above)
        tl.store(m_ptr + row, m_i, mask=live)
        tl.store(l_ptr + row, l_i, mask=live)
        tl.store(acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=live[:, None])
        if split < live_splits:
            # The last live split to finish reduces them all (kernels._launch.count_in_split's
            # pattern), where a second kernel would cost a launch and a few µs at decode.
            tl.debug_barrier()
            lock = lock_ptr + b * NUM_KV_HEADS + h
            if tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == live_splits - 1:
                _reduce_splits(m_ptr, l_ptr, acc_ptr, out_ptr + b * stride_ob + h * GROUP * stride_oh,
                               (b * NUM_KV_HEADS + h) * GROUP, num_splits, live_splits, stride_oh, GROUP,
                               BLOCK_GR, HEAD_DIM, SPLIT_BLOCK)
                tl.atomic_xchg(lock, 0)


@triton.jit
def _reduce_splits(m_ptr, l_ptr, acc_ptr, o_ptr, row0, num_splits, live_splits, stride_oh,
                   GROUP: tl.constexpr, BLOCK_GR: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT_BLOCK: tl.constexpr):
    """The GROUP query heads whose partials start at row ``row0`` (of [B * Hq]), into ``o_ptr``
    (the first head's output): each live split's partial rescaled to the running max, normalized
    once. All heads and SPLIT_BLOCK splits a load, so a decode step's few splits take one round
    trip to L2 (a loop over heads took one each, ~1 µs apiece on the H100). The loads skip L1,
    which other SMs' stores do not update."""
    offs_g = tl.arange(0, BLOCK_GR)
    offs_s = tl.arange(0, SPLIT_BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_g = offs_g < GROUP
    rows = (row0 + offs_g) * num_splits
    m_run = tl.full([BLOCK_GR], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BLOCK_GR], dtype=tl.float32)
    o = tl.zeros([BLOCK_GR, HEAD_DIM], dtype=tl.float32)
    for s0 in range(0, live_splits, SPLIT_BLOCK):
        idx = rows[:, None] + s0 + offs_s[None, :]
        live = mask_g[:, None] & (s0 + offs_s < live_splits)[None, :]
        m = tl.load(m_ptr + idx, mask=live, other=float("-inf"), cache_modifier=".cg")
        l = tl.load(l_ptr + idx, mask=live, other=0.0, cache_modifier=".cg")
        acc = tl.load(acc_ptr + idx[:, :, None] * HEAD_DIM + offs_d[None, None, :], mask=live[:, :, None],
                      other=0.0, cache_modifier=".cg")
        # A live split whose positions were all masked carries m = -inf, l = 0, acc = 0 and
        # weighs nothing. While no split has seen a position (a length-0 sequence) the max is
        # -inf: 0 stands in for it so that no -inf - -inf = NaN arises, and the output is 0 / 1.
        m_new = tl.maximum(m_run, tl.max(m, axis=1))
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
        alpha = tl.math.exp2(m_run - m_safe)
        w = tl.math.exp2(m - m_safe[:, None])
        total = total * alpha + tl.sum(w * l, axis=1)
        o = o * alpha[:, None] + tl.sum(acc * w[:, :, None], axis=1)
        m_run = m_new
    o = o / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(o_ptr + offs_g[:, None] * stride_oh + offs_d[None, :], o.to(o_ptr.dtype.element_ty),
             mask=mask_g[:, None])


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
    """Launches :func:`_decode_attention_kernel`; same contract as :func:`decode_attention`.
    ``num_splits`` overrides :func:`num_splits_for` (tests, bench)."""
    _check(q, k_cache, v_cache, seq_lens, k_scale, v_scale, sm_scale)
    if not q.is_cuda:
        _check_lengths(seq_lens, k_cache.shape[2])
    return _attend(q, k_cache, v_cache, seq_lens.contiguous(), None, k_scale, v_scale, sm_scale, num_splits)


def decode_attention_update_triton(q, k, v, cos, sin, k_cache, v_cache, positions, *, sm_scale=None, fill=None,
                                   num_splits: int | None = None):
    """Launches :func:`_decode_attention_kernel` with the step's RoPE and cache write; same contract
    as :func:`decode_attention_update`."""
    _check_update(q, k, v, cos, sin, k_cache, v_cache, positions, sm_scale, fill)
    if not q.is_cuda:
        _check_positions(positions, k_cache.shape[2])
    k, v = (t if t.stride(2) == 1 else t.contiguous() for t in (k, v))
    cos, sin = (t if t.stride(1) == 1 else t.contiguous() for t in (cos, sin))
    if cos.stride(0) != sin.stride(0):
        cos, sin = cos.contiguous(), sin.contiguous()
    return _attend(q, k_cache, v_cache, positions, (k, v, cos, sin, fill), None, None, sm_scale, num_splits)


def _attend(q, k_cache, v_cache, lens, update, k_scale, v_scale, sm_scale, num_splits):
    """The launch behind both entry points: ``lens`` holds lengths, or with ``update`` (k, v, cos,
    sin, fill) the new token's positions."""
    b, hq, d = q.shape
    hkv, s_max = k_cache.shape[1], k_cache.shape[2]
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"q's head dim must be a power of two from 16 to 256 for the Triton kernel, got {d}")
    if b == 0 or hq == 0:
        return q.new_empty(b, hq, d)
    if q.stride(2) != 1:
        q = q.contiguous()
    if k_cache.stride(3) != 1:
        k_cache = k_cache.contiguous()
    if v_cache.stride(3) != 1:
        v_cache = v_cache.contiguous()
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
        m = l = acc = locks = out  # unused
    else:
        m = torch.empty(b, hq, num_splits, dtype=torch.float32, device=q.device)
        l = torch.empty(b, hq, num_splits, dtype=torch.float32, device=q.device)
        acc = torch.empty(b, hq, num_splits, d, dtype=torch.float32, device=q.device)
        locks = split_k_locks(q.device, b * hkv)
    scale = (1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)) * LOG2E
    ks = k_scale.contiguous() if fp8 else lens
    vs = v_scale.contiguous() if fp8 else lens
    # The reduction's tile: every query head of the group and up to 8K fp32 partial elements.
    block_gr = triton.next_power_of_2(group)
    split_block = max(1, min(triton.next_power_of_2(num_splits), REDUCE_TILE // (block_gr * d)))
    # Without an update the kernel never reads the step's tensors: q stands in for them.
    k_new, v_new, cos, sin, fill = update if update is not None else (q, q, q, q, None)
    launch(
        _decode_attention_kernel, (b, hkv, num_splits),
        q, k_cache, v_cache, lens, ks, vs, out, m, l, acc, locks, k_new, v_new, cos, sin,
        fill if fill is not None else lens,
        scale, s_max, chunk, triton.next_power_of_2(b), hkv, lens.stride(0) if lens.shape[0] == b else 0,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1), cos.stride(0),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=d,
        KV_FP8=fp8, Q_FP32=q.dtype == torch.float32, DIRECT=direct, UPDATE=update is not None,
        HAS_FILL=fill is not None, BLOCK_GR=block_gr, SPLIT_BLOCK=split_block, **pdl_args(q.device),
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


def decode_attention_update(q, k, v, cos, sin, k_cache, v_cache, positions, *, sm_scale=None, fill=None,
                            backend: str = "auto"):
    """One decode step's attention with the step's own cache write, as one kernel: rotates the
    query and the new key by RoPE (rotate-half, as Llama), writes the key and value into the caches
    at each sequence's position, and attends to positions up to and including it.

    Args:
        q: [B, Hq, D] queries before RoPE (fp32, fp16 or bf16).
        k, v: [B, Hkv, D] the step's new key (before RoPE) and value, in q's dtype.
        cos, sin: [B, D] the RoPE factors of each sequence's new position.
        k_cache, v_cache: [B, Hkv, S_max, D] bf16 / fp16, written in place at the new position.
        positions: int32 / int64 [B], or [1] for every sequence: the new token's position, in
            [0, S_max) (the reference and CPU tensors check; the CUDA kernel writes nothing out of
            range and clamps the length).
        sm_scale: logit multiplier, 1 / sqrt(D) when None.
        fill: an integer count that grows by one (a static cache's count of written positions),
            or None.
        backend: ``auto``, ``triton`` or ``reference`` (see :func:`kernels._launch.use_triton`).

    Returns:
        [B, Hq, D] in q's dtype.
    """
    if use_triton(q, backend):
        return decode_attention_update_triton(q, k, v, cos, sin, k_cache, v_cache, positions, sm_scale=sm_scale,
                                              fill=fill)
    return decode_attention_update_reference(q, k, v, cos, sin, k_cache, v_cache, positions, sm_scale=sm_scale,
                                             fill=fill)
