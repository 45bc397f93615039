"""W4A16 GEMM: packed int4 weights with group-wise scales and zeros, 16-bit activations.

Decode is bound by reading the packed weights, N*K/2 bytes. One token takes a CUDA-core GEMV
(one launch, no split-K); up to 8 tokens, or 16 on weights with N >= K, the mma.sync kernel of
kernels/w4a16_mma.py (16-bit activations, groups of a multiple of 128); up to ``TC_MAX_M`` tokens
a tl.dot tensor-core kernel with the weights on the MMA's wide side; prefill dequantizes once to
x.dtype and calls cuBLAS.
"""
import os

import torch
import triton
import triton.language as tl

from kernels._launch import (cdiv, check_2d, check_dtype, check_shape, count_in_split, first_config_only,
                             gemv_early_dependents, graph_bench, interpreting, launch, launch_dependents, pdl_args,
                             split_k_locks, sum_splits, use_triton, wait_prior_grid, zero_output)
from kernels.packing import pack_int4, unpack_int4
from kernels import w4a16_mma

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


def silu_mul(y: torch.Tensor) -> torch.Tensor:
    """A gated MLP's activation on its fused gate and up outputs: silu(y[:, :N/2]) * y[:, N/2:]."""
    gate, up = y.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def output_width(n: int, gated: bool) -> int:
    """Output features of an N-row weight: N, or gated (gate over up rows) N / 2, for an even N."""
    if not gated:
        return n
    if n % 2:
        raise ValueError(f"gated needs the gate and up rows stacked, an even N; packed has N={n}")
    return n // 2


def gemm_w4a16_reference(x, packed, scales, zeros, group_size: int, bias=None, gated: bool = False):
    """Pure-torch :func:`gemm_w4a16`: dequantize to fp32, fp32 matmul (and silu_mul), cast to x.dtype."""
    _check_w4a16(x, packed, scales, zeros, group_size, bias)
    output_width(packed.shape[0], gated)
    # read MK + NK/2 + 2 NK/g ; write MN (plus an NK fp32 temporary for the dequantized weight)
    w = dequantize_w4_reference(packed, scales, zeros, group_size)
    out = x.float() @ w.t()
    if bias is not None:
        out = out + bias.float()
    return (silu_mul(out) if gated else out).to(x.dtype)


# Paths by token count. One token takes a CUDA-core GEMV that reads the packed rows as int32
# words, in one launch that writes the output (no split-K buffer to zero, no cast). Up to
# TC_MAX_M tokens the tensor-core kernel swaps the operands (weights are the MMA's wide side,
# tokens its narrow side). Above it, dequantizing
# once and calling cuBLAS is faster (H100, 8192 x 8192: 88 vs 120 µs at M = 128, 152 vs 132 at
# M = 256; bench/results/kernels-h100.md).
GEMV_MAX_M = 1
TC_MAX_M = 128
PATHS = ("auto", "gemv", "mma", "tc", "dequant")


def _gemv_config(bn, quads, warps, maxnreg=None):
    return triton.Config({"BLOCK_N": bn, "QUADS": quads}, num_warps=warps, num_stages=1, maxnreg=maxnreg)


# What bounds the GEMV is the SM's issue rate and L1, not DRAM. The byte-wise form it replaced
# spent ~8.7 SASS instructions per weight plus 16 barriers a step (x moved through shared memory
# into the weights' layout each step) and streamed 1.1 TB/s at 8192 x 8192; Nsight Compute on an
# intermediate form put L1/TEX at 90% of peak and DRAM at 32%. This one reads int32 words with x
# in their own layout and shares each x load among four row sets. From 4.35 SASS instructions per
# weight (python bench/kernel_sass.py; 17.2 µs at 8192 x 8192 on the H100, 2.74x bf16) to 3.54
# (15.8 µs, 2.99x): two codes per shift (_expand, PAIRED), one FFMA chain over a quad's words,
# scale and zero rows addressed once instead of with 64-bit math every load, and two steps an
# iteration so the register double buffer swaps instead of being copied.
# BLOCK_N rows per set, four sets per program, QUADS quads of a row per step. Every candidate of
# a CUDA-graph sweep (bench/w4a16_sweep.py, bench/results/w4a16-gemv-sweep-h100.json) that won or
# came within 3% on some Llama shape: a row's step spread over two or four warps (QUADS 64..128)
# wins where K is long against N (4096 x 14336: 14.1 µs) or N is small (1024 x 4096: 2.9 µs,
# 4096 x 4096: 6.1), one warp per row set where N is large (8192 x 8192: 15.6, 28672 x 8192: 46.0).
# Nsight Compute on the H100 (1/64/2 at 8192 x 8192): 80 registers a thread cap occupancy at 24
# warps an SM, and the top stall is waiting on L1TEX (40% of cycles between issues). A thread
# holding one quad a step fits 64 or 72 registers without spilling (ptxas), for 32 or 28 warps an
# SM; capped, the best config ran 1-3% faster on five of seven Llama shapes in an A/B on the H100
# (bench/w4a16_ab.py maxnreg; CUDA-graph µs, best uncapped -> best capped: 8192 x 8192 15.7 ->
# 15.6, 4096 x 4096 6.1 -> 5.9, 28672 x 4096 25.0 -> 24.2, 4096 x 14336 14.1 -> 13.9, 28672 x
# 8192 46.0 -> 44.6), so both kinds are candidates. Configs with more quads a thread spill when
# capped and ran up to 3.5x slower.
_CONFIGS_GEMV = [
    _gemv_config(1, 64, 2),
    _gemv_config(2, 32, 2),
    _gemv_config(1, 32, 1),
    _gemv_config(2, 64, 4),
    _gemv_config(1, 128, 2),
    _gemv_config(1, 64, 1),
    _gemv_config(2, 128, 4),
    _gemv_config(1, 64, 2, maxnreg=64),
    _gemv_config(1, 64, 2, maxnreg=72),
    _gemv_config(1, 32, 1, maxnreg=72),
]
_CONFIGS_GEMV_INTERPRET = [_gemv_config(4, 4, 1)]


# A code q put in the mantissa's top four bits of 1.0 reads 1 + q / 16; in the next four bits of
# 16.0, 16 + q / 16. One shift can put two neighbouring codes of a word in both places at once.
ONE_BITS = tl.constexpr(0x3F800000)
SIXTEEN_BITS = tl.constexpr(0x41800000)
HI_NIBBLE = tl.constexpr(0x00780000)
LO_NIBBLE = tl.constexpr(0x00078000)


@triton.jit
def _to_f32(x, X_BF16: tl.constexpr):
    """Activations to fp32; bf16 by moving its bits up (a bf16 is the top half of an fp32)."""
    if X_BF16:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def _split8(x, BN: tl.constexpr, Q: tl.constexpr):
    """[BN, Q, 8] -> its eight [BN, Q] slices in order, by register moves (the 8 are in-thread)."""
    even, odd = tl.split(tl.reshape(x, [BN, Q, 4, 2]))
    e0, e1 = tl.split(tl.reshape(even, [BN, Q, 2, 2]))
    o0, o1 = tl.split(tl.reshape(odd, [BN, Q, 2, 2]))
    x0, x4 = tl.split(e0)
    x2, x6 = tl.split(e1)
    x1, x5 = tl.split(o0)
    x3, x7 = tl.split(o1)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _nibble(word, SHIFT: tl.constexpr, MASK: tl.constexpr, BITS: tl.constexpr):
    """The code that a shift by SHIFT (left if positive) puts under MASK, as the float BITS | code:
    no conversion and no subtraction (those are done once per quad, see the callers)."""
    if SHIFT >= 0:
        m = word << SHIFT
    else:
        m = word >> -SHIFT
    return ((m & MASK) | BITS).to(tl.float32, bitcast=True)


# On the GPU the eight codes of a word are expanded by one PTX block of shifts and one LOP3 per
# code. Written in Triton, each AND and OR come out as two LOP3s (ptxas does not fold two constants
# into one); the interpreter, which runs no PTX, takes the Triton form. Paired, codes 2j and 2j + 1
# share a shift and read 16 + q / 16 and 1 + q / 16 (4 shifts a word); single, each code has its
# own shift and reads 1 + q / 16 (8 shifts).
_EXPAND_PAIRED_ASM = tl.constexpr("""{
.reg .b32 t;
shl.b32 t, $8, 15; lop3.b32 $0, t, 0x78000, 0x41800000, 0xEA; lop3.b32 $1, t, 0x780000, 0x3F800000, 0xEA;
shl.b32 t, $8, 7; lop3.b32 $2, t, 0x78000, 0x41800000, 0xEA; lop3.b32 $3, t, 0x780000, 0x3F800000, 0xEA;
shr.u32 t, $8, 1; lop3.b32 $4, t, 0x78000, 0x41800000, 0xEA; lop3.b32 $5, t, 0x780000, 0x3F800000, 0xEA;
shr.u32 t, $8, 9; lop3.b32 $6, t, 0x78000, 0x41800000, 0xEA; lop3.b32 $7, t, 0x780000, 0x3F800000, 0xEA;
}""")
_EXPAND_SINGLE_ASM = tl.constexpr("""{
.reg .b32 t;
shl.b32 t, $8, 19; lop3.b32 $0, t, 0x780000, 0x3F800000, 0xEA;
shl.b32 t, $8, 15; lop3.b32 $1, t, 0x780000, 0x3F800000, 0xEA;
shl.b32 t, $8, 11; lop3.b32 $2, t, 0x780000, 0x3F800000, 0xEA;
shl.b32 t, $8, 7; lop3.b32 $3, t, 0x780000, 0x3F800000, 0xEA;
shl.b32 t, $8, 3; lop3.b32 $4, t, 0x780000, 0x3F800000, 0xEA;
shr.u32 t, $8, 1; lop3.b32 $5, t, 0x780000, 0x3F800000, 0xEA;
shr.u32 t, $8, 5; lop3.b32 $6, t, 0x780000, 0x3F800000, 0xEA;
shr.u32 t, $8, 9; lop3.b32 $7, t, 0x780000, 0x3F800000, 0xEA;
}""")
EXPAND_ASM = tl.constexpr(not interpreting())


@triton.jit
def _expand(word, PAIRED: tl.constexpr):
    """The 8 codes of each int32 word, code i first-to-last, as 1 + q / 16, or, PAIRED, as
    16 + q / 16 for even i."""
    if PAIRED:
        if EXPAND_ASM:
            return tl.inline_asm_elementwise(_EXPAND_PAIRED_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [word],
                                             dtype=(tl.float32,) * 8, is_pure=True, pack=1)
        return (_nibble(word, 15, LO_NIBBLE, SIXTEEN_BITS), _nibble(word, 15, HI_NIBBLE, ONE_BITS),
                _nibble(word, 7, LO_NIBBLE, SIXTEEN_BITS), _nibble(word, 7, HI_NIBBLE, ONE_BITS),
                _nibble(word, -1, LO_NIBBLE, SIXTEEN_BITS), _nibble(word, -1, HI_NIBBLE, ONE_BITS),
                _nibble(word, -9, LO_NIBBLE, SIXTEEN_BITS), _nibble(word, -9, HI_NIBBLE, ONE_BITS))
    if EXPAND_ASM:
        return tl.inline_asm_elementwise(_EXPAND_SINGLE_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [word],
                                         dtype=(tl.float32,) * 8, is_pure=True, pack=1)
    return (_nibble(word, 19, HI_NIBBLE, ONE_BITS), _nibble(word, 15, HI_NIBBLE, ONE_BITS),
            _nibble(word, 11, HI_NIBBLE, ONE_BITS), _nibble(word, 7, HI_NIBBLE, ONE_BITS),
            _nibble(word, 3, HI_NIBBLE, ONE_BITS), _nibble(word, -1, HI_NIBBLE, ONE_BITS),
            _nibble(word, -5, HI_NIBBLE, ONE_BITS), _nibble(word, -9, HI_NIBBLE, ONE_BITS))


@triton.jit
def _word_dot(word, acc, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED: tl.constexpr, FIRST: tl.constexpr):
    """acc (none if FIRST) + sum_i v_i x_i over the 8 codes of an int32 word (code i at bits
    4i .. 4i + 3, i.e. k = 8w + i in the [N, K // 2] packing, little-endian), v_i as _expand gives
    them: sum_i q_i x_i / 16 plus sum x, or, PAIRED, plus 16 sum_even x + sum_odd x. One chain of
    FFMAs over a quad's four words."""
    v0, v1, v2, v3, v4, v5, v6, v7 = _expand(word, PAIRED)
    if FIRST:
        acc = v0 * x0
    else:
        acc += v0 * x0
    acc += v1 * x1
    acc += v2 * x2
    acc += v3 * x3
    acc += v4 * x4
    acc += v5 * x5
    acc += v6 * x6
    acc += v7 * x7
    return acc


@triton.jit
def _split_words(words, BN: tl.constexpr, Q: tl.constexpr):
    """[BN, Q, 4] words -> the four [BN, Q] words of each quad, in order."""
    w01, w23 = tl.split(tl.reshape(words, [BN, Q, 2, 2]))
    w0, w2 = tl.split(w01)
    w1, w3 = tl.split(w23)
    return w0, w1, w2, w3


@triton.jit
def _quad_dots(words_a, words_b, words_c, words_d, x_ptrs, X_BF16: tl.constexpr, PAIRED: tl.constexpr,
               BN: tl.constexpr, Q: tl.constexpr):
    """For four row sets and one step of quads: (sum v x of each set, its code-free part, sum x).
    Each activation is loaded, converted and summed once for the four sets."""
    a0, a1, a2, a3 = _split_words(words_a, BN, Q)
    b0, b1, b2, b3 = _split_words(words_b, BN, Q)
    c0, c1, c2, c3 = _split_words(words_c, BN, Q)
    d0, d1, d2, d3 = _split_words(words_d, BN, Q)
    x0, x1, x2, x3, x4, x5, x6, x7 = _split8(_to_f32(tl.load(x_ptrs), X_BF16), BN, Q)
    dot_a = _word_dot(a0, None, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, True)
    dot_b = _word_dot(b0, None, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, True)
    dot_c = _word_dot(c0, None, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, True)
    dot_d = _word_dot(d0, None, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, True)
    x_even = x0 + x2 + x4 + x6
    x_odd = x1 + x3 + x5 + x7
    for j in tl.static_range(1, 4):
        wa = a1 if j == 1 else (a2 if j == 2 else a3)
        wb = b1 if j == 1 else (b2 if j == 2 else b3)
        wc = c1 if j == 1 else (c2 if j == 2 else c3)
        wd = d1 if j == 1 else (d2 if j == 2 else d3)
        x0, x1, x2, x3, x4, x5, x6, x7 = _split8(_to_f32(tl.load(x_ptrs + 8 * j), X_BF16), BN, Q)
        dot_a = _word_dot(wa, dot_a, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, False)
        dot_b = _word_dot(wb, dot_b, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, False)
        dot_c = _word_dot(wc, dot_c, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, False)
        dot_d = _word_dot(wd, dot_d, x0, x1, x2, x3, x4, x5, x6, x7, PAIRED, False)
        x_even += x0 + x2 + x4 + x6
        x_odd += x1 + x3 + x5 + x7
    x_base = 16.0 * x_even + x_odd if PAIRED else x_even + x_odd
    return dot_a, dot_b, dot_c, dot_d, x_base, x_even + x_odd


@triton.jit
def _gemv_step_loads(words_ptr, s_rows, z_rows, q0, n_quads, QUADS: tl.constexpr, QUADS_PER_GROUP: tl.constexpr):
    """The words, scales and zeros of the step at quad q0 (``s_rows`` and ``z_rows`` point at the
    rows' first groups, so a step adds a 32-bit group index). Quads past the end re-read quad 0
    with a zero scale, so they add nothing (and the prefetch past the last step reads valid memory)."""
    quad = q0 + tl.arange(0, QUADS)
    live = quad < n_quads
    quad = tl.where(live, quad, 0)
    words = tl.load(words_ptr + quad[None, :, None] * 4 + tl.arange(0, 4)[None, None, :], eviction_policy="evict_first")
    group = (quad // QUADS_PER_GROUP)[None, :]
    s = tl.load(s_rows + group).to(tl.float32) * live.to(tl.float32)[None, :]
    z = tl.load(z_rows + group).to(tl.float32)
    return words, s, z


@triton.autotune(
    configs=_CONFIGS_GEMV_INTERPRET if interpreting() else _CONFIGS_GEMV,
    key=["N", "K", "GROUP", "GATED"],
    prune_configs_by={"early_config_prune": first_config_only},
    do_bench=graph_bench,
)
@triton.jit
def _w4a16_gemv_kernel(
    x_ptr, p_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    N, K, stride_pn, stride_sn,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, X_BF16: tl.constexpr, PAIRED: tl.constexpr,
    GATED: tl.constexpr, BLOCK_N: tl.constexpr, QUADS: tl.constexpr, EARLY_DEPENDENTS: tl.constexpr,
    PDL: tl.constexpr,
):
    # One token; a program owns four sets of BLOCK_N rows over all of K. A step reads, per row,
    # QUADS quads of 4 int32 words (32 codes, 16 bytes, one load per thread) and the matching 32
    # activations per quad, loaded with the rows axis broadcast so they land in the words' own
    # layout (a plain [QUADS, 32] load would be converted through shared memory every step) and
    # used by all four row sets (Triton 3.6 does not merge the loads of a broadcast axis by
    # itself): each activation is loaded, converted and summed once per four rows a thread holds.
    # With codes read as v = 1 + q / 16, a quad's sum (q - zero) x = 16 (sum v x - sum x) - zero sum x.
    # PAIRED (16-bit activations) reads even codes as 16 + q / 16, which halves the shifts; the
    # code-free part it subtracts, 16 sum_even x + sum_odd x, is larger, and the cancellation costs
    # ~4 bits of fp32 that a 16-bit output does not have (fp32 activations keep them);
    # the scale applies once per quad, since a quad never crosses a group (GROUP is a multiple of 32).
    # GATED (a gated MLP's gate and up projections as one [2N, K] weight): N is the output's
    # width, sets a and b are gate rows and c and d the up rows N further, and the program stores
    # silu(gate) * up, computed from the fp32 sums.
    pid_n = tl.program_id(0)
    OUTPUT_ROWS: tl.constexpr = (2 if GATED else 4) * BLOCK_N
    offs_a = pid_n * OUTPUT_ROWS + tl.arange(0, BLOCK_N)
    offs_b = offs_a + BLOCK_N
    live_a = offs_a < N
    live_b = offs_b < N
    if GATED:
        offs_c = offs_a + N
        offs_d = offs_b + N
        live_c = live_a
        live_d = live_b
    else:
        offs_c = offs_b + BLOCK_N
        offs_d = offs_c + BLOCK_N
        live_c = offs_c < N
        live_d = offs_d < N
    rows_a = tl.where(live_a, offs_a, 0).to(tl.int64)
    rows_b = tl.where(live_b, offs_b, 0).to(tl.int64)
    rows_c = tl.where(live_c, offs_c, 0).to(tl.int64)
    rows_d = tl.where(live_d, offs_d, 0).to(tl.int64)
    n_quads = K // 32
    QPG: tl.constexpr = GROUP // 32
    words = p_ptr.to(tl.pointer_type(tl.int32))
    ptr_a = words + rows_a[:, None, None] * (stride_pn // 4)
    ptr_b = words + rows_b[:, None, None] * (stride_pn // 4)
    ptr_c = words + rows_c[:, None, None] * (stride_pn // 4)
    ptr_d = words + rows_d[:, None, None] * (stride_pn // 4)
    x_rows = x_ptr + (rows_a * 0)[:, None, None]
    s_a_rows = s_ptr + rows_a[:, None] * stride_sn
    s_b_rows = s_ptr + rows_b[:, None] * stride_sn
    s_c_rows = s_ptr + rows_c[:, None] * stride_sn
    s_d_rows = s_ptr + rows_d[:, None] * stride_sn
    z_a_rows = z_ptr + rows_a[:, None] * stride_sn
    z_b_rows = z_ptr + rows_b[:, None] * stride_sn
    z_c_rows = z_ptr + rows_c[:, None] * stride_sn
    z_d_rows = z_ptr + rows_d[:, None] * stride_sn

    acc_a = tl.zeros((BLOCK_N, QUADS), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N, QUADS), dtype=tl.float32)
    acc_c = tl.zeros((BLOCK_N, QUADS), dtype=tl.float32)
    acc_d = tl.zeros((BLOCK_N, QUADS), dtype=tl.float32)
    # The next step's words and scales are loaded before this step's arithmetic (a register
    # double buffer): each thread keeps one step of loads in flight while it computes. Two steps an
    # iteration, so the two buffers swap roles instead of being copied (16 moves a step).
    words_a, s_a, z_a = _gemv_step_loads(ptr_a, s_a_rows, z_a_rows, 0, n_quads, QUADS, QPG)
    words_b, s_b, z_b = _gemv_step_loads(ptr_b, s_b_rows, z_b_rows, 0, n_quads, QUADS, QPG)
    words_c, s_c, z_c = _gemv_step_loads(ptr_c, s_c_rows, z_c_rows, 0, n_quads, QUADS, QPG)
    words_d, s_d, z_d = _gemv_step_loads(ptr_d, s_d_rows, z_d_rows, 0, n_quads, QUADS, QPG)
    # The first step's weights are read while the previous kernel finishes; x after it has.
    wait_prior_grid(PDL, EARLY_DEPENDENTS)
    n_steps = tl.cdiv(n_quads, QUADS)
    for q0 in range(0, (n_steps // 2) * 2 * QUADS, 2 * QUADS):
        next_a, ns_a, nz_a = _gemv_step_loads(ptr_a, s_a_rows, z_a_rows, q0 + QUADS, n_quads, QUADS, QPG)
        next_b, ns_b, nz_b = _gemv_step_loads(ptr_b, s_b_rows, z_b_rows, q0 + QUADS, n_quads, QUADS, QPG)
        next_c, ns_c, nz_c = _gemv_step_loads(ptr_c, s_c_rows, z_c_rows, q0 + QUADS, n_quads, QUADS, QPG)
        next_d, ns_d, nz_d = _gemv_step_loads(ptr_d, s_d_rows, z_d_rows, q0 + QUADS, n_quads, QUADS, QPG)
        acc_a, acc_b, acc_c, acc_d = _gemv_step(acc_a, acc_b, acc_c, acc_d, words_a, words_b, words_c, words_d,
                                                s_a, s_b, s_c, s_d, z_a, z_b, z_c, z_d, x_rows, q0, n_quads,
                                                X_BF16, PAIRED, BLOCK_N, QUADS)
        words_a, s_a, z_a = _gemv_step_loads(ptr_a, s_a_rows, z_a_rows, q0 + 2 * QUADS, n_quads, QUADS, QPG)
        words_b, s_b, z_b = _gemv_step_loads(ptr_b, s_b_rows, z_b_rows, q0 + 2 * QUADS, n_quads, QUADS, QPG)
        words_c, s_c, z_c = _gemv_step_loads(ptr_c, s_c_rows, z_c_rows, q0 + 2 * QUADS, n_quads, QUADS, QPG)
        words_d, s_d, z_d = _gemv_step_loads(ptr_d, s_d_rows, z_d_rows, q0 + 2 * QUADS, n_quads, QUADS, QPG)
        acc_a, acc_b, acc_c, acc_d = _gemv_step(acc_a, acc_b, acc_c, acc_d, next_a, next_b, next_c, next_d,
                                                ns_a, ns_b, ns_c, ns_d, nz_a, nz_b, nz_c, nz_d, x_rows, q0 + QUADS,
                                                n_quads, X_BF16, PAIRED, BLOCK_N, QUADS)
    if n_steps % 2:
        acc_a, acc_b, acc_c, acc_d = _gemv_step(acc_a, acc_b, acc_c, acc_d, words_a, words_b, words_c, words_d,
                                                s_a, s_b, s_c, s_d, z_a, z_b, z_c, z_d, x_rows, (n_steps - 1) * QUADS,
                                                n_quads, X_BF16, PAIRED, BLOCK_N, QUADS)

    if not EARLY_DEPENDENTS:
        launch_dependents(PDL)
    out_a = _row_sums(bias_ptr, acc_a, offs_a, live_a, HAS_BIAS)
    out_b = _row_sums(bias_ptr, acc_b, offs_b, live_b, HAS_BIAS)
    out_c = _row_sums(bias_ptr, acc_c, offs_c, live_c, HAS_BIAS)
    out_d = _row_sums(bias_ptr, acc_d, offs_d, live_d, HAS_BIAS)
    if GATED:
        _store_out(out_ptr, out_a * tl.sigmoid(out_a) * out_c, offs_a, live_a)
        _store_out(out_ptr, out_b * tl.sigmoid(out_b) * out_d, offs_b, live_b)
    else:
        _store_out(out_ptr, out_a, offs_a, live_a)
        _store_out(out_ptr, out_b, offs_b, live_b)
        _store_out(out_ptr, out_c, offs_c, live_c)
        _store_out(out_ptr, out_d, offs_d, live_d)


@triton.jit
def _gemv_step(acc_a, acc_b, acc_c, acc_d, words_a, words_b, words_c, words_d, s_a, s_b, s_c, s_d,
               z_a, z_b, z_c, z_d, x_rows, q0, n_quads, X_BF16: tl.constexpr, PAIRED: tl.constexpr,
               BN: tl.constexpr, Q: tl.constexpr):
    """One step of quads at q0 for the four row sets, added to their accumulators."""
    quad = q0 + tl.arange(0, Q)
    quad = tl.where(quad < n_quads, quad, 0)
    x_ptrs = x_rows + quad[None, :, None] * 32 + tl.arange(0, 8)[None, None, :]
    dot_a, dot_b, dot_c, dot_d, xbase, xsum = _quad_dots(words_a, words_b, words_c, words_d, x_ptrs, X_BF16,
                                                         PAIRED, BN, Q)
    acc_a += (16.0 * (dot_a - xbase) - z_a * xsum) * s_a
    acc_b += (16.0 * (dot_b - xbase) - z_b * xsum) * s_b
    acc_c += (16.0 * (dot_c - xbase) - z_c * xsum) * s_c
    acc_d += (16.0 * (dot_d - xbase) - z_d * xsum) * s_d
    return acc_a, acc_b, acc_c, acc_d


@triton.jit
def _row_sums(bias_ptr, acc, rows, live, HAS_BIAS: tl.constexpr):
    """fp32 outputs of a row set: its [BN, QUADS] partial sums added up, plus the rows' bias."""
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=live, other=0.0).to(tl.float32)
    return out


@triton.jit
def _store_out(out_ptr, out, offs_n, live):
    tl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=live)


def _tc_config(bn, split_k, warps, stages, groups_per_step=1, reg_prefetch=False):
    return triton.Config({"BLOCK_N": bn, "SPLIT_K": split_k, "GROUPS_PER_STEP": groups_per_step,
                          "REG_PREFETCH": reg_prefetch}, num_warps=warps, num_stages=stages,
                         pre_hook=zero_output if split_k > 1 else None)


# The fastest in a CUDA-graph sweep on the H100 (8192 x 8192 and 28672 x 8192 at M = 16, 8192 x
# 8192 and 14336 x 4096 at M = 64), then a few narrower ones for small N. Loading the next step's
# words before dequantizing this one's (REG_PREFETCH) was faster for some shapes and slower for
# others in an A/B on the H100 (CUDA-graph µs, off -> on: 8192 x 8192 M = 64 51.8 -> 49.8, M = 128
# 79.3 -> 71.0, 14336 x 4096 M = 16 32.8 -> 30.7; 14336 x 4096 M = 64 41.4 -> 44.6, 28672 x 8192
# M = 16 99.2 -> 101.6), so the widest configs come both ways and the autotuner picks. Eight-way
# split-K (python bench/w4a16_sweep.py --tc, bench/results/w4a16-tc-sweep-h100.json) won where K
# is long against N: 4096 x 14336 at M = 16 35.6 -> 27.5 µs and at M = 64 50.0 -> 43.6, 4096 x
# 4096 at M = 16 14.8 -> 13.6; the other shapes kept their picks.
_CONFIGS_TC = [
    _tc_config(128, 8, 8, 3, reg_prefetch=True),
    _tc_config(64, 8, 4, 3, reg_prefetch=True),
    _tc_config(64, 8, 4, 2),
    _tc_config(128, 4, 8, 3, reg_prefetch=True),
    _tc_config(64, 4, 4, 3, reg_prefetch=True),
    _tc_config(128, 2, 8, 3, reg_prefetch=True),
    _tc_config(64, 2, 4, 3, reg_prefetch=True),
    _tc_config(64, 4, 4, 3, groups_per_step=2),
    _tc_config(128, 4, 8, 3),
    _tc_config(128, 4, 4, 3),
    _tc_config(64, 4, 4, 3),
    _tc_config(64, 2, 4, 3),
    _tc_config(64, 1, 4, 3),
    _tc_config(128, 2, 8, 3),
    _tc_config(128, 1, 8, 3),
    _tc_config(32, 4, 4, 2, groups_per_step=4),
    _tc_config(32, 8, 4, 2, groups_per_step=2),
]
_CONFIGS_TC_INTERPRET = [_tc_config(16, 2, 4, 1, groups_per_step=2)]


@triton.jit
def _dequant_words(words, scale16, off_even, off_odd, W_DTYPE: tl.constexpr, BN: tl.constexpr,
                   WIDTH: tl.constexpr):
    """[BN, NG, WPG] int32 words -> [BN, WIDTH] weights (q - zero) * scale in k order, with
    per-group ``scale16 = 16 scale``, ``off_even = -(256 + zero) scale`` and
    ``off_odd = -(16 + zero) scale`` ([BN, NG, 1]).

    Each code is read as v = 16 + q / 16 or 1 + q / 16 (_expand) and dequantized by one FFMA,
    v * 16 s + offset, whose exact value (q - z) s fits fp32 (8 significant bits of s, 5 of q - z),
    so the only rounding is the cast, as in the reference. The eight codes of a word are joined
    back into k order (code i is k = 8w + i)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = _expand(words, True)
    w0 = (v0 * scale16 + off_even).to(W_DTYPE)
    w1 = (v1 * scale16 + off_odd).to(W_DTYPE)
    w2 = (v2 * scale16 + off_even).to(W_DTYPE)
    w3 = (v3 * scale16 + off_odd).to(W_DTYPE)
    w4 = (v4 * scale16 + off_even).to(W_DTYPE)
    w5 = (v5 * scale16 + off_odd).to(W_DTYPE)
    w6 = (v6 * scale16 + off_even).to(W_DTYPE)
    w7 = (v7 * scale16 + off_odd).to(W_DTYPE)
    # join adds a trailing axis, so the first join is the slowest of the three: index 4a + 2b + c.
    t = tl.join(tl.join(tl.join(w0, w4), tl.join(w2, w6)), tl.join(tl.join(w1, w5), tl.join(w3, w7)))
    return tl.reshape(t, [BN, WIDTH])


@triton.jit
def _tc_step_loads(words_ptr, s_rows, z_rows, stride_sg, g0, g_end, NG: tl.constexpr, WORDS_PER_GROUP: tl.constexpr):
    """The words, scales and zeros of the NG groups from g0. Groups past this split's end re-read
    group 0 with a zero scale: the step adds nothing (and a prefetch past the end reads valid memory)."""
    g = g0 + tl.arange(0, NG)
    live = g < g_end
    g = tl.where(live, g, 0)
    words = tl.load(words_ptr + g[None, :, None] * WORDS_PER_GROUP + tl.arange(0, WORDS_PER_GROUP)[None, None, :])
    s = tl.load(s_rows + g[None, :] * stride_sg).to(tl.float32) * live.to(tl.float32)[None, :]
    z = tl.load(z_rows + g[None, :] * stride_sg).to(tl.float32)
    return words, s, z


@triton.autotune(
    configs=_CONFIGS_TC_INTERPRET if interpreting() else _CONFIGS_TC,
    key=["BLOCK_M", "N", "K", "GROUP", "GATED", "SERIAL"],
    prune_configs_by={"early_config_prune": first_config_only},
    do_bench=graph_bench,
)
@triton.jit
def _w4a16_tc_kernel(
    x_ptr, p_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, part_ptr, lock_ptr,
    M, N, K,
    stride_xm, stride_pn, stride_sn, stride_sg, stride_om,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, X_FP32: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, REG_PREFETCH: tl.constexpr,
    SERIAL: tl.constexpr, PDL: tl.constexpr,
):
    # out^T [N, M] = W [N, K] x^T [K, M]: the weight tile is the MMA's left operand, read K-major
    # as it is stored, and all BLOCK_M tokens (16..128) are the right operand, so the weights are
    # streamed once. A step reads GROUPS_PER_STEP groups of int32 words per row (one contiguous
    # run) and dequantizes them into one MMA operand, at 5.2-6.4 SASS instructions per weight on
    # sm_90 (Triton 3.9) against ~9 for the byte-wise form it replaced.
    # SERIAL: the output is x.dtype and split-K programs reduce in the launch, the last of a tile
    # summing the splits' fp32 partials (kernels._launch.count_in_split); otherwise the output is
    # fp32 and split programs add into it with atomics, zeroed before and cast after the launch.
    # GATED (SERIAL only; N weight rows, gate over up): a tile's first half is gate rows and its
    # second half the up rows N / 2 further, and the program stores silu(gate) * up.
    wait_prior_grid(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    NG: tl.constexpr = GROUPS_PER_STEP
    WORDS_PER_GROUP: tl.constexpr = GROUP // 8
    if GATED:
        HALF: tl.constexpr = BLOCK_N // 2
        tile = tl.arange(0, BLOCK_N)
        offs_out = pid_n * HALF + tile % HALF
        mask_n = offs_out < N // 2
        offs_n = offs_out + (tile // HALF) * (N // 2)
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
    rows = tl.where(mask_n, offs_n, 0).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    rows_x = tl.where(mask_m, offs_m, 0).to(tl.int64)
    offs_k = tl.arange(0, NG * GROUP)
    n_groups = K // GROUP
    per_split = tl.cdiv(tl.cdiv(n_groups, NG), SPLIT_K) * NG
    g_begin = pid_k * per_split
    g_end = tl.minimum(g_begin + per_split, n_groups)
    words_ptr = p_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None, None] * (stride_pn // 4)
    s_rows = s_ptr + rows[:, None] * stride_sn
    z_rows = z_ptr + rows[:, None] * stride_sn
    w_dtype = x_ptr.dtype.element_ty

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if REG_PREFETCH:
        words, s, z = _tc_step_loads(words_ptr, s_rows, z_rows, stride_sg, g_begin, g_end, NG, WORDS_PER_GROUP)
    for g0 in range(g_begin, g_end, NG):
        if REG_PREFETCH:
            next_words, next_s, next_z = _tc_step_loads(words_ptr, s_rows, z_rows, stride_sg, g0 + NG, g_end, NG,
                                                        WORDS_PER_GROUP)
        else:
            words, s, z = _tc_step_loads(words_ptr, s_rows, z_rows, stride_sg, g0, g_end, NG, WORDS_PER_GROUP)
        w = _dequant_words(words, (16.0 * s)[:, :, None], (-(256.0 + z) * s)[:, :, None], (-(16.0 + z) * s)[:, :, None],
                           w_dtype, BLOCK_N, NG * GROUP)
        x_mask = (offs_k[:, None] < (g_end - g0) * GROUP) & mask_m[None, :]
        x_t = tl.load(x_ptr + rows_x[None, :] * stride_xm + g0 * GROUP + offs_k[:, None], mask=x_mask, other=0.0)
        if X_FP32:
            # fp32 activations get full-precision products, not Triton's default tf32.
            acc = tl.dot(w, x_t, acc, input_precision="ieee")
        else:
            acc = tl.dot(w, x_t, acc)
        if REG_PREFETCH:
            words, s, z = next_words, next_s, next_z

    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + rows, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT_K == 1:
        _store_tc_tile(out_ptr, acc, offs_n, offs_m, mask_n, mask_m, stride_om, GATED, BLOCK_N, BLOCK_M)
    elif SERIAL:
        parts = part_ptr + offs_m[None, :] * N + rows[:, None]
        if count_in_split(acc, parts, mask, M * N, lock_ptr + pid_n, pid_k) == SPLIT_K - 1:
            total = sum_splits(parts, mask, M * N, lock_ptr + pid_n, SPLIT_K)
            _store_tc_tile(out_ptr, total, offs_n, offs_m, mask_n, mask_m, stride_om, GATED, BLOCK_N, BLOCK_M)
    else:
        tl.atomic_add(out_ptr + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None], acc, mask=mask)


@triton.jit
def _store_tc_tile(out_ptr, acc, offs_n, offs_m, mask_n, mask_m, stride_om, GATED: tl.constexpr, BN: tl.constexpr,
                   BM: tl.constexpr):
    """Stores an fp32 [BN, BM] tile of out^T in the output's dtype; GATED, silu(gate) * up of its
    two halves, [BN / 2, BM]."""
    if GATED:
        gate, up = tl.split(tl.permute(tl.reshape(acc, [2, BN // 2, BM]), [1, 2, 0]))
        acc = gate * tl.sigmoid(gate) * up
        offs_n = tl.split(tl.permute(tl.reshape(offs_n, [2, BN // 2]), [1, 0]))[0]
        mask_n = tl.split(tl.permute(tl.reshape(mask_n, [2, BN // 2]), [1, 0]))[0]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


# Up to this many tokens the tensor-core kernel writes x.dtype in one launch and reduces split-K
# in it (serially: the last split of a tile sums the partials); above, its splits add into an fp32
# output with atomics, between a fill and a cast. CUDA-graph µs on the H100, atomic -> serial
# (bench/results/w4a16-tc-serial-split-h100.json): M = 16, 8192 x 8192 32.4-32.5 -> 30.2-30.6,
# 4096 x 14336 28.0-28.2 -> 26.0-26.1, 14336 x 4096 gated (silu * mul in the store, not a launch
# after) 39.7-40.2 -> 25.8-27.1; M = 32, 14336 x 4096 34.7 -> 30.9, gated 38.9 -> 29.1, 4096 x 4096
# 16.7 -> 15.0, 8192 x 8192 and 4096 x 14336 even. At M = 64, 4096 x 14336 43.8-43.9 -> 56.6-56.8:
# eight splits' partials, written and read back, cost more than the two launches saved.
SERIAL_MAX_M = 32


# Up to w4a16_mma.MAX_M tokens (16-bit activations, groups of a multiple of 128) the mma.sync
# kernel (kernels/w4a16_mma.py) runs. CUDA-graph µs on the H100, tensor-core kernel -> mma kernel
# in its rule's config (bench/results/w4a16-mma-sweep-{a,b,c}-h100.json): 8 tokens, 8192 x 8192 28.7
# -> 16.7, 28672 x 8192 89.3 -> 53.7, 28672 x 4096 gated 49.6 -> 29.3, 4096 x 14336 24.2 -> 17.4;
# 16 tokens, 8192 x 8192 30.4 -> 20.6, 8192 x 28672 90.0 -> 61.4, 4096 x 14336 26.1 -> 22.8, 2048 x
# 4096 8.6 -> 8.1, and 1024 x 4096 6.4 -> 6.6 (the one shape swept where the tl.dot kernel's split-K
# stays ahead). Long-K weights above 8 tokens took the tl.dot kernel before the rule gave them
# R2 W8 S1 (4096 x 14336 at 16 tokens: 29.9 in the config before).
# Paths that read scales and zeros faster group-major ([groups, N] storage viewed as [N, groups]);
# the runtime keeps such copies for them (QuantLinear.keep_group_major_scales). The mma kernel, its
# config fixed, in two runs on the H100 (bench/results/w4a16-mma-h100.json, -l2-ahead-h100.json;
# CUDA-graph µs, row- -> group-major): 8192 x 8192 at 8 tokens 19.3 -> 18.5 and 18.7 -> 17.9, at 16
# 25.1 -> 24.6; 28672 x 8192 at 8 60.0 -> 57.0 and 59.4 -> 56.0, at 16 75.4 -> 72.7 and 75.3 -> 72.1.
GROUP_MAJOR_PATHS = ("tc", "mma")


def w4a16_path(m: int, group_size: int, n: int, k: int, x_dtype: torch.dtype) -> str:
    """The W4A16 kernel the launcher runs for ``m`` tokens of ``x_dtype`` against an [n, k] weight:
    ``gemv``, ``mma``, ``tc`` or ``dequant``. ``PRECISIONOPS_W4A16_MMA=0`` turns the mma path off
    (A/B runs; the tensor-core kernel serves its calls)."""
    # The fused kernels step one group at a time with tl.arange over GROUP / 2 bytes: a power of
    # two of at least 16 bytes. Other groups dequantize first.
    if group_size & (group_size - 1) or group_size < 32:
        return "dequant"
    if m <= GEMV_MAX_M:
        return "gemv"
    if w4a16_mma.supports(x_dtype, m, group_size, n, k) and os.environ.get("PRECISIONOPS_W4A16_MMA", "1") != "0":
        return "mma"
    return "tc" if m <= TC_MAX_M else "dequant"


def gemm_w4a16_triton(x, packed, scales, zeros, group_size: int, bias=None, *, gated: bool = False,
                      path: str = "auto", integer_zeros: bool = False):
    """Launches the W4A16 path for ``x``'s token count (``path`` forces one, for bench/kernels.py)."""
    _check_w4a16(x, packed, scales, zeros, group_size, bias)
    n_out = output_width(packed.shape[0], gated)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    m, k = x.shape
    n = packed.shape[0]
    if m == 0 or n == 0:
        return x.new_empty(m, n_out)
    if path == "auto":
        path = w4a16_path(m, group_size, n, k, x.dtype)
    elif path != "dequant" and w4a16_path(1, group_size, n, k, x.dtype) == "dequant":
        raise ValueError(f"path={path!r} needs a power-of-two group_size >= 32, got {group_size}")
    if path == "gemv" and m != 1:
        raise ValueError(f"path='gemv' serves one token, got M={m}")
    if path == "mma":
        return w4a16_mma.gemm_w4a16_mma(x, packed, scales, zeros, group_size, bias, gated, integer_zeros)
    if path == "tc" and m > 256:
        raise ValueError(f"path='tc' serves at most 256 tokens, got M={m}")
    if path == "dequant":
        w = dequantize_w4_triton(packed, scales, zeros, group_size, x.dtype)
        y = torch.nn.functional.linear(x, w, bias.to(x.dtype) if bias is not None else None)
        return silu_mul(y.float()).to(x.dtype) if gated else y
    x = x.contiguous()
    packed = packed.contiguous()
    if path != "tc" or zeros.stride() != scales.stride():
        scales = scales.contiguous()
        zeros = zeros.contiguous()
    args = (m, n, k, x.stride(0), packed.stride(0), scales.stride(0))
    if path == "gemv":
        if packed.data_ptr() % 16:
            # The GEMV reads 16-byte runs of words; a view at an odd offset gets an aligned copy.
            packed = packed.clone()
        out = torch.empty(m, n_out, dtype=x.dtype, device=x.device)
        # Gated, a program's four row sets are two of gate rows and the two of up rows they pair with.
        outputs_per_program = 2 if gated else 4
        launch(
            _w4a16_gemv_kernel, lambda meta: (cdiv(n_out, outputs_per_program * meta["BLOCK_N"]),),
            x, packed, scales, zeros, bias if bias is not None else scales, out, n_out, k,
            packed.stride(0), scales.stride(0), GROUP=group_size, HAS_BIAS=bias is not None,
            X_BF16=x.dtype == torch.bfloat16, PAIRED=x.dtype != torch.float32, GATED=gated,
            EARLY_DEPENDENTS=gemv_early_dependents(), **pdl_args(x.device),
        )
        return out
    serial = m <= SERIAL_MAX_M
    if serial:
        out = torch.empty(m, n_out, dtype=x.dtype, device=x.device)
        # Each split's fp32 partials get a slice; the count words are shared (see split_k_locks).
        max_split = max(c.kwargs["SPLIT_K"] for c in _w4a16_tc_kernel.configs)
        parts = torch.empty(max_split, m, n, dtype=torch.float32, device=x.device)
        locks = split_k_locks(x.device, cdiv(n, min(c.kwargs["BLOCK_N"] for c in _w4a16_tc_kernel.configs)))
    else:
        out = parts = locks = torch.empty(m, n, dtype=torch.float32, device=x.device)
    launch(
        _w4a16_tc_kernel, lambda meta: (cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"]),
        x, packed, scales, zeros, bias if bias is not None else scales, out, parts, locks, *args, scales.stride(1),
        out.stride(0), GROUP=group_size, HAS_BIAS=bias is not None, X_FP32=x.dtype == torch.float32,
        GATED=gated and serial, BLOCK_M=max(16, triton.next_power_of_2(m)), SERIAL=serial, **pdl_args(x.device),
    )
    if serial:
        return out
    return (silu_mul(out) if gated else out).to(x.dtype)


@triton.jit
def _dequant_w4_kernel(p_ptr, s_ptr, z_ptr, w_ptr, K, stride_pn, stride_sn, stride_wn,
                       GROUP: tl.constexpr, BLOCK_J: tl.constexpr, PDL: tl.constexpr):
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
    # Only the store needs the previous kernel done: w's memory may be what it last read.
    wait_prior_grid(PDL)
    tl.store(w_ptr + row * stride_wn + offs_k, tl.interleave(lo, hi), mask=offs_k < K)


def dequantize_w4_triton(packed, scales, zeros, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Dequantizes packed int4 weights to ``dtype`` [N, K] in one pass (prefill's cuBLAS path)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    scales, zeros = scales.contiguous(), zeros.contiguous()
    w = torch.empty(n, k, dtype=dtype, device=packed.device)
    block_j = min(1024, triton.next_power_of_2(k // 2))
    launch(
        _dequant_w4_kernel, (n, cdiv(k // 2, block_j)),
        packed, scales, zeros, w, k, packed.stride(0), scales.stride(0), w.stride(0),
        GROUP=group_size, BLOCK_J=block_j, **pdl_args(packed.device),
    )
    return w


def gemm_w4a16(x, packed, scales, zeros, group_size: int = 128, bias=None, *, gated: bool = False,
               backend: str = "auto", integer_zeros: bool = False):
    """``x @ dequant(packed).T + bias`` with int4 weights dequantized per group.

    Args:
        x: [M, K] bf16, fp16 or fp32 activations.
        packed: uint8 [N, K // 2] int4 codes (see :func:`kernels.packing.pack_int4`).
        scales: [N, K // group_size] float scales, any strides. The tensor-core path (2..128
            tokens) reads them as laid out, and a group-major view (``s.t().contiguous().t()``,
            one step's rows contiguous) ran 2-10% faster on the H100 than the row-major layout
            (bench/results/w4a16-tc-scale-layout-h100.json); the other paths take a row-major
            copy of any other layout.
        zeros: [N, K // group_size] zero points, same dtype as scales (and the same strides, or
            both are copied row-major); value = (q - zero) * scale.
        group_size: K elements per scale (128 in the default recipes).
        bias: [N] or None.
        gated: the rows stack a gated MLP's gate projection over its up projection (N even);
            returns :func:`silu_mul` of the fp32 product, [M, N / 2]. At one token the GEMV
            applies it as it stores, so the MLP's activation costs no launch of its own.
        backend: ``auto``, ``triton`` or ``reference``.
        integer_zeros: the caller vouches that every zero is an integer in 0..15 (as the
            runtime's quantizers make them); the mma kernel (2..16 tokens) then subtracts
            them from the codes exactly, a little faster. Fractional zeros would give wrong results.

    Returns:
        [M, N] (gated: [M, N / 2]) in x.dtype.
    """
    if use_triton(x, backend):
        return gemm_w4a16_triton(x, packed, scales, zeros, group_size, bias, gated=gated,
                                 integer_zeros=integer_zeros)
    return gemm_w4a16_reference(x, packed, scales, zeros, group_size, bias, gated=gated)
