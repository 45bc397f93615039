"""W4A16 decode on ``mma.sync``: int4 codes turned into the MMA's operand in registers, 1 to 16 tokens.

The GEMV (one token) spends ~3.5 SASS instructions a weight on CUDA cores (shift, mask, FFMA and
x handling), and the tl.dot kernel (2..128 tokens) 5-6 plus a trip through shared memory; both
are bound by issue and latency, not by the N*K/2 bytes they read. Here each warp issues
Hopper's legacy ``mma.m16n8k16`` itself (inline assembly, one element per thread so that each
lane holds exactly its fragment) and builds the left operand straight from the packed words:
``lop3(word >> s, 0x000F000F, MAGIC)`` puts two codes into the mantissas of a 16-bit pair that
reads OFFSET + q (bf16 0x4300: 128 + q; fp16 0x6400: 1024 + q), seven instructions per 8 codes.
The MMA sums sum_k (OFFSET + q_k) x_k in fp32; a second MMA with an all-ones left operand sums
x over the same k, and per group ``scale * (sum - (OFFSET + zero) * sum x)`` is the exact
``sum (q - zero) scale x`` up to fp32 rounding (the cancellation costs about 5 of fp32's 24
bits with bf16's OFFSET, 8 with fp16's). Where the caller vouches that every zero is an integer
in 0..15 (``integer_zeros``; the runtime's quantizer rounds them), a packed 16-bit subtraction of
OFFSET + zero turns the codes into q - zero exactly (four more instructions per 8 codes), and the
all-ones MMA, a third of the MMAs with two tiles, and its cancellation go.

Layout: a program owns ROW_BLOCKS blocks of 16 weight rows; its WARPS warps split K in chunks of
128 codes, STEP_CHUNKS adjacent chunks a warp and step and the warps side by side (a row's bytes
are read in runs of STEP_CHUNKS * WARPS * 64), and their partial sums are added at the end.
(Warps that split the rows instead, all walking the same chunks with K split across programs,
ran 20-50% slower on the H100 at every shape: each row read in 64-byte pieces.) In a chunk,
lane l reads 32 codes (four int32 words, one 16-byte load) of rows l // 4 and l // 4 + 8, the
words 4 (l % 4) .. 4 (l % 4) + 3 of the chunk's 16. The sum over k is order-free, so the MMA's
k slots take whatever codes a lane holds as long as the right operand (x, lane l's token l // 4)
holds the matching x: word bits s and 16 + s pair codes i and i + 4, and the x pairs are
shuffled to match. The output fragment of lane l is tokens 2 (l % 4) and + 1, rows l // 4 and + 8.

Under ``TRITON_INTERPRET`` (no PTX), :func:`_mma` is emulated with the same fragment layout, so
the CPU tests check every index of the scheme; the GPU tests check the assembly.
"""
import torch
import triton
import triton.language as tl

from kernels._launch import (cdiv, device_properties, first_config_only, graph_bench, interpreting, launch,
                             launch_dependents, pdl_args, wait_prior_grid)

# Codes per chunk: the 4 lanes of a row read 32 each. A group is one or more chunks.
CHUNK_CODES = 128
CHUNK = tl.constexpr(CHUNK_CODES)
MAX_M = 16
ASM = tl.constexpr(not interpreting())
# Two 16-bit halves of a register: codes with a mantissa offset, and 1.0 (the sum-of-x MMA).
MAGIC_BF16 = tl.constexpr(0x43004300)
MAGIC_F16 = tl.constexpr(0x64006400)
ONES_BF16 = tl.constexpr(0x3F803F80)
ONES_F16 = tl.constexpr(0x3C003C00)
LOW_NIBBLES = tl.constexpr(0x000F000F)


def _mma_config(row_blocks, warps, step_chunks, l2_256b=True):
    return triton.Config({"ROW_BLOCKS": row_blocks, "WARPS": warps, "STEP_CHUNKS": step_chunks, "L2_256B": l2_256b},
                         num_warps=warps, num_stages=1)


# Configs by rule, from CUDA-graph sweeps of every config on the H100 (python bench/w4a16_mma.py,
# bench/results/w4a16-mma-sweep-{a,b,c}-h100.json; integer zeros and group-major scales, as the
# runtime launches it; the autotuner's own CUDA-graph timing (kernels._launch.graph_bench) picked
# configs 20-25% slower than the best in two of five earlier runs, so the launcher does not tune
# this kernel). What decides is how many programs the weight's rows make against the SMs' slots
# for them (ptxas, Triton 3.6: 1 to 7 programs an SM by the config's registers): the config that
# gives each SM its rows in one wave with the fewest, widest programs ran fastest, or within 5% of
# the fastest, on every shape swept (11 Llama shapes, 1024 to 28672 rows). By programs of 32
# rows, as a multiple of the SM count (µs at that bound's shapes):
# - 1 tile: <= 1/4 R1 W8 S2 (1024 x 4096: 4.4); <= 1/2 R1 W8 S1 (2048 x 4096: 5.8); <= 1 R2 W8
#   S2 (4096 x 4096: 6.9 against 7.4 for R2 W8 S1, 4096 x 14336: 17.4 against 19.9); <= 2 R2 W8
#   S1, two an SM (8192 x 8192: 16.7); <= 3 R2 W4 S2, three an SM (10240 x 8192: 22.3 against
#   26.1); more R2 W4 S1, four an SM (14336 x 4096: 15.9; 28672 x 8192: 53.8).
# - 2 tiles: <= 1/4 R1 W8 S1 (1024 x 4096: 6.6, the best 6.3); <= 1 R2 W8 S1, one an SM (4096 x
#   4096: 8.8 against 10.6 for R2 W4 S2, the config before); <= 2 R4 W8 S1, one an SM (8192 x
#   8192: 20.6 against 24.8; 8192 x 28672: 61.4 against 78.9); <= 3 R2 W4 S1, three an SM
#   (10240 x 8192: 29.6 against 32.0 for R4 W4 S1); more R4 W4 S1, two an SM (14336 x 4096:
#   18.7 against 23.6; 28672 x 8192: 64.1).
# Gated launches pair gate and up blocks, so they skip the R1 configs. L2_256B (the weight
# loads ask L2 for 256-byte DRAM fetches) was 1-7% faster with every config the rule picks but R1
# W8 S2 and R2 W8 S2 (within 1% either way).
# (programs of 32 rows at most, as a multiple of the SM count; ROW_BLOCKS, WARPS, STEP_CHUNKS), by
# tiles of 8 tokens.
_RULE = {1: [(1 / 4, (1, 8, 2)), (1 / 2, (1, 8, 1)), (1, (2, 8, 2)), (2, (2, 8, 1)), (3, (2, 4, 2)),
             (float("inf"), (2, 4, 1))],
         2: [(1 / 4, (1, 8, 1)), (1, (2, 8, 1)), (2, (4, 8, 1)), (3, (2, 4, 1)), (float("inf"), (4, 4, 1))]}
_BY_SHAPE = {shape: _mma_config(*shape) for rule in _RULE.values() for _, shape in rule}
_CONFIGS = list(_BY_SHAPE.values())
_CONFIGS_INTERPRET = [_mma_config(2, 2, 2)]
H100_SMS = 132


def pick_config(rows: int, tiles: int, gated: bool = False, sms: int = H100_SMS) -> triton.Config:
    """The config the rule above gives a weight of ``rows`` rows and 1 or 2 tiles of 8 tokens on a
    GPU of ``sms`` SMs (gated launches pair gate and up blocks: they skip the R1 configs)."""
    programs = cdiv(rows, 32)
    return next(_BY_SHAPE[shape] for bound, shape in _RULE[tiles]
                if programs <= bound * sms and not (gated and shape[0] == 1))


def _prune(configs, named_args, **kwargs):
    """The rule's config, unless one config is forced (kernels._launch.only_config: sweeps, tests)."""
    named = {**named_args, **kwargs}
    if len(configs) > 1 and not interpreting():
        gated = named.get("GATED", False)
        x = named["x_ptr"]
        # CPU tensors: bench/sm90_compile.py planning sm_90 launches, for which the H100's count.
        sms = device_properties(x.device).multi_processor_count if x.is_cuda else H100_SMS
        configs = [pick_config(named["N"] * (2 if gated else 1), named.get("TILES", 1), gated, sms)]
    return first_config_only(configs, named_args, **kwargs)


@triton.jit
def _offset(X_BF16: tl.constexpr):
    return 128.0 if X_BF16 else 1024.0


def _codes_asm(magic: int, sub: str | None = None) -> str:
    """PTX: a word's codes 0..3 shifted to bits 0 and 16 of four registers, under ``magic``; with
    ``sub`` (a packed 16-bit subtraction), minus the pair in $5 (OFFSET + zero, twice)."""
    expand = [f"lop3.b32 $0, $4, 0x000F000F, {magic:#x}, 0xEA;"]
    expand += [f"shr.u32 t, $4, {4 * i}; lop3.b32 ${i}, t, 0x000F000F, {magic:#x}, 0xEA;" for i in (1, 2, 3)]
    if sub:
        expand += [f"{sub} ${i}, ${i}, $5;" for i in range(4)]
    return "{\n.reg .b32 t;\n" + "\n".join(expand) + "\n}"


def _mma_asm(ab_type: str) -> str:
    return (f"mma.sync.aligned.m16n8k16.row.col.f32.{ab_type}.{ab_type}.f32 {{$0,$1,$2,$3}}, {{$4,$5,$6,$7}}, "
            "{$8,$9}, {$10,$11,$12,$13};")


CODES_ASM_BF16 = tl.constexpr(_codes_asm(0x43004300))
CODES_ASM_F16 = tl.constexpr(_codes_asm(0x64006400))
CODES_MINUS_ZERO_ASM_BF16 = tl.constexpr(_codes_asm(0x43004300, "sub.rn.bf16x2"))
CODES_MINUS_ZERO_ASM_F16 = tl.constexpr(_codes_asm(0x64006400, "sub.rn.f16x2"))
MMA_ASM_BF16 = tl.constexpr(_mma_asm("bf16"))
MMA_ASM_F16 = tl.constexpr(_mma_asm("f16"))
LOAD_WEIGHTS_ASM = tl.constexpr("ld.global.L1::no_allocate.v4.b32 {$0,$1,$2,$3}, [$4];")
LOAD_WEIGHTS_L2_256B_ASM = tl.constexpr("ld.global.L1::no_allocate.L2::256B.v4.b32 {$0,$1,$2,$3}, [$4];")


@triton.jit
def _codes(word, zero_pair, X_BF16: tl.constexpr, INT_ZEROS: tl.constexpr):
    """The 8 codes of int32 words as four registers of 16-bit pairs (OFFSET + q; INT_ZEROS: q - zero,
    ``zero_pair`` holding OFFSET + zero twice): shifts 0, 4, 8 and 12 pair codes (0, 4), (1, 5),
    (2, 6) and (3, 7)."""
    if ASM:
        if INT_ZEROS:
            return tl.inline_asm_elementwise(CODES_MINUS_ZERO_ASM_BF16 if X_BF16 else CODES_MINUS_ZERO_ASM_F16,
                                             "=r,=r,=r,=r,r,r", [word, zero_pair], dtype=(tl.int32,) * 4,
                                             is_pure=True, pack=1)
        return tl.inline_asm_elementwise(CODES_ASM_BF16 if X_BF16 else CODES_ASM_F16, "=r,=r,=r,=r,r", [word],
                                         dtype=(tl.int32,) * 4, is_pure=True, pack=1)
    magic = MAGIC_BF16 if X_BF16 else MAGIC_F16
    c0 = (word & LOW_NIBBLES) | magic
    c1 = ((word >> 4) & LOW_NIBBLES) | magic
    c2 = ((word >> 8) & LOW_NIBBLES) | magic
    c3 = ((word >> 12) & LOW_NIBBLES) | magic
    if INT_ZEROS:
        c0 = _minus_pair_emulated(c0, zero_pair, X_BF16)
        c1 = _minus_pair_emulated(c1, zero_pair, X_BF16)
        c2 = _minus_pair_emulated(c2, zero_pair, X_BF16)
        c3 = _minus_pair_emulated(c3, zero_pair, X_BF16)
    return c0, c1, c2, c3


@triton.jit
def _minus_pair_emulated(reg, pair, X_BF16: tl.constexpr):
    """``sub.rn.{bf16,f16}x2`` of two registers whose halves hold small integers (exact)."""
    lo, hi = _halves(reg, X_BF16)
    zero, _ = _halves(pair, X_BF16)
    return _pair_bits(lo - zero, X_BF16) | (_pair_bits(hi - zero, X_BF16) << 16)


@triton.jit
def _pair_bits(value, X_BF16: tl.constexpr):
    """fp32 values that are small integers -> their 16-bit encoding (exact), in an int32's low half."""
    if X_BF16:  # an integer below 256 has no mantissa bits past bf16's
        return (value.to(tl.int32, bitcast=True) >> 16) & 0xFFFF
    return value.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def _zero_pair(zero, X_BF16: tl.constexpr):
    """OFFSET + zero (an integer) in both 16-bit halves: what :func:`_codes` subtracts."""
    if ASM:
        # A conversion, not _pair_bits' shift: the shift's form ran 3% slower on the H100 (8192 x
        # 8192, 16 tokens: 24.9 against 24.1 µs) for a near-identical instruction count.
        bits = (_offset(X_BF16) + zero).to(tl.bfloat16 if X_BF16 else tl.float16).to(tl.int16, bitcast=True)
        bits = bits.to(tl.int32) & 0xFFFF
    else:
        bits = _pair_bits(_offset(X_BF16) + zero, X_BF16)
    return bits | (bits << 16)


@triton.jit
def _x_pairs(w0, w1, w2, w3):
    """Eight 16-bit activations in four words, pairs (0, 1) .. (6, 7) -> the right-operand
    registers of the two MMAs of that word's codes: (x0, x4), (x1, x5) and (x2, x6), (x3, x7)."""
    return ((w0 & 0xFFFF) | (w2 << 16), ((w0 >> 16) & 0xFFFF) | (w2 & -65536),
            (w1 & 0xFFFF) | (w3 << 16), ((w1 >> 16) & 0xFFFF) | (w3 & -65536))


@triton.jit
def _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, X_BF16: tl.constexpr, P: tl.constexpr, W: tl.constexpr):
    """D = C + A B of one ``mma.m16n8k16`` per warp, fp32 accumulation; every operand a [P, W, 32]
    tensor with element (p, w, l) in lane l of warp w (p: the P independent MMAs a lane issues)."""
    if ASM:
        return tl.inline_asm_elementwise(MMA_ASM_BF16 if X_BF16 else MMA_ASM_F16, "=f,=f,=f,=f,r,r,r,r,r,r,0,1,2,3",
                                         [a0, a1, a2, a3, b0, b1, c0, c1, c2, c3], dtype=(tl.float32,) * 4,
                                         is_pure=True, pack=1)
    return _mma_emulated(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, X_BF16, P, W)


@triton.jit
def _halves(reg, X_BF16: tl.constexpr):
    """A register's two 16-bit values (low half first) as fp32, decoded from their bits."""
    if X_BF16:
        return (reg << 16).to(tl.float32, bitcast=True), (reg & -65536).to(tl.float32, bitcast=True)
    lo = (reg & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (reg >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _pairs_to_cols(first, second, P: tl.constexpr, W: tl.constexpr):
    """Two [P, W, 32] fp32 value pairs -> [P, W, 8, 16]: row l // 4, columns 2 (l % 4) + h from
    ``first`` and 8 + 2 (l % 4) + h from ``second`` (h: the pair's half)."""
    a = tl.reshape(tl.join(first[0], first[1]), [P, W, 8, 8])
    b = tl.reshape(tl.join(second[0], second[1]), [P, W, 8, 8])
    return tl.reshape(tl.permute(tl.join(a, b), [0, 1, 2, 4, 3]), [P, W, 8, 16])


@triton.jit
def _stack_rows(top, bottom, P: tl.constexpr, W: tl.constexpr, COLS: tl.constexpr):
    """[P, W, 8, COLS] rows 0..7 and 8..15 -> [P, W, 16, COLS]."""
    return tl.reshape(tl.permute(tl.join(top, bottom), [0, 1, 4, 2, 3]), [P, W, 16, COLS])


@triton.jit
def _mma_emulated(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, X_BF16: tl.constexpr, P: tl.constexpr,
                  W: tl.constexpr):
    """:func:`_mma` in Triton operations, from PTX's fragment layout of m16n8k16 (A row-major
    16 x 16, B 16 x 8, C and D 16 x 8): lane l = 4 g + j holds A[g, 2j + h] in a0, A[g + 8, 2j + h]
    in a1, A[g, 8 + 2j + h] in a2, A[g + 8, 8 + 2j + h] in a3; B[2j + h, g] in b0,
    B[8 + 2j + h, g] in b1; C[g, 2j + h] in c0 / c1 (h = 0 / 1), C[g + 8, 2j + h] in c2 / c3."""
    a_top = _pairs_to_cols(_halves(a0, X_BF16), _halves(a2, X_BF16), P, W)
    a_bottom = _pairs_to_cols(_halves(a1, X_BF16), _halves(a3, X_BF16), P, W)
    a = _stack_rows(a_top, a_bottom, P, W, 16)
    b_t = _pairs_to_cols(_halves(b0, X_BF16), _halves(b1, X_BF16), P, W)  # [P, W, n, k]
    c = _stack_rows(tl.reshape(tl.join(c0, c1), [P, W, 8, 8]), tl.reshape(tl.join(c2, c3), [P, W, 8, 8]), P, W, 8)
    d = c + tl.sum(a[:, :, :, None, :] * b_t[:, :, None, :, :], axis=4)  # [P, W, 16, 8]
    d = tl.permute(tl.reshape(d, [P, W, 2, 8, 4, 2]), [0, 1, 3, 4, 2, 5])  # [P, W, g, j, row half, h]
    even, odd = tl.split(tl.reshape(d, [P, W, 32, 2, 2]))
    d0, d2 = tl.split(even)
    d1, d3 = tl.split(odd)
    return d0, d1, d2, d3


@triton.jit
def _load4(ptrs, WEIGHTS: tl.constexpr, L2_256B: tl.constexpr = False):
    """The four int32 words from each of ``ptrs`` (16-byte aligned), one 16-byte load a lane.

    On the GPU the loads are inline assembly: a tl.load is laid out by Triton's coalescing, which
    (Triton 3.6) may put a lane's words in other lanes and carry that layout into the MMA operands,
    which must stay where the MMA reads them. Weights are read once and bypass L1; L2_256B asks L2
    to fetch the 256 bytes around each weight load from DRAM (see the configs)."""
    if ASM:
        if WEIGHTS:
            return tl.inline_asm_elementwise(LOAD_WEIGHTS_L2_256B_ASM if L2_256B else LOAD_WEIGHTS_ASM,
                                             "=r,=r,=r,=r,l", [ptrs], dtype=(tl.int32,) * 4, is_pure=False,
                                             pack=1)
        return tl.inline_asm_elementwise("ld.global.v4.b32 {$0,$1,$2,$3}, [$4];", "=r,=r,=r,=r,l", [ptrs],
                                         dtype=(tl.int32,) * 4, is_pure=False, pack=1)
    return tl.load(ptrs), tl.load(ptrs + 1), tl.load(ptrs + 2), tl.load(ptrs + 3)


@triton.jit
def _load_scale(ptrs, SCALE_FP32: tl.constexpr):
    """A scale or zero a lane (bf16, fp16 or, SCALE_FP32, fp32) as fp32; inline assembly on the GPU,
    as _load4."""
    if ASM:
        if SCALE_FP32:
            bits = tl.inline_asm_elementwise("ld.global.b32 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                             is_pure=False, pack=1)
            value = bits.to(tl.float32, bitcast=True)
        else:
            bits = tl.inline_asm_elementwise("ld.global.b16 $0, [$1];", "=h,l", [ptrs], dtype=tl.int16,
                                             is_pure=False, pack=1)
            value = bits.to(ptrs.dtype.element_ty, bitcast=True).to(tl.float32)
    else:
        value = tl.load(ptrs).to(tl.float32)
    return value


@triton.jit
def _chunk_loads(words, s_ptr, z_ptr, lo_words, hi_words, lo_scales, hi_scales, chunk, n_chunks, stride_sg,
                 GROUP: tl.constexpr, SCALE_FP32: tl.constexpr, L2_256B: tl.constexpr):
    """Words of rows lo and hi (four [R, W, 32] each), and their scales and zeros, of each warp's
    chunk ([1, W, 1]), from int32 offsets of the rows (pointers would take two registers each).
    A chunk past the end re-reads chunk 0 with a zero scale: it adds nothing."""
    live = chunk < n_chunks
    chunk = tl.where(live, chunk, 0)
    at = chunk * (CHUNK // 8)
    lo = _load4(words + (lo_words + at), True, L2_256B)
    hi = _load4(words + (hi_words + at), True, L2_256B)
    group = (chunk * CHUNK // GROUP) * stride_sg
    keep = live.to(tl.float32)
    s_lo = _load_scale(s_ptr + (lo_scales + group), SCALE_FP32) * keep
    s_hi = _load_scale(s_ptr + (hi_scales + group), SCALE_FP32) * keep
    z_lo = _load_scale(z_ptr + (lo_scales + group), SCALE_FP32)
    z_hi = _load_scale(z_ptr + (hi_scales + group), SCALE_FP32)
    return lo, hi, s_lo, s_hi, z_lo, z_hi


@triton.jit
def _prefetch_x(x_ptrs, chunk, n_chunks):
    """Asks L1 for the activations of a later chunk, so that its loads, at use, hit there (a
    register buffer of them would cost 16 registers a tile of tokens)."""
    if ASM:
        chunk = tl.where(chunk < n_chunks, chunk, 0)
        tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [x_ptrs + chunk * (CHUNK // 2)],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _x_loads(x_ptrs, chunk, n_chunks, keep_token):
    """A chunk's 32 activations of each lane's token ([1, W, 32] pointers), as four words of 8;
    ``keep_token`` (-1 or 0) zeroes the tokens past M (their pointers read token 0)."""
    chunk = tl.where(chunk < n_chunks, chunk, 0)
    base = x_ptrs + chunk * (CHUNK // 2)
    w0 = _load4(base, False)
    w1 = _load4(base + 4, False)
    w2 = _load4(base + 8, False)
    w3 = _load4(base + 12, False)
    return ((w0[0] & keep_token, w0[1] & keep_token, w0[2] & keep_token, w0[3] & keep_token),
            (w1[0] & keep_token, w1[1] & keep_token, w1[2] & keep_token, w1[3] & keep_token),
            (w2[0] & keep_token, w2[1] & keep_token, w2[2] & keep_token, w2[3] & keep_token),
            (w3[0] & keep_token, w3[1] & keep_token, w3[2] & keep_token, w3[3] & keep_token))


@triton.jit
def _chunk_sums(lo, hi, zero_lo, zero_hi, xa, xb, X_BF16: tl.constexpr, INT_ZEROS: tl.constexpr,
                TILES: tl.constexpr, R: tl.constexpr, W: tl.constexpr):
    """One chunk: the MMA sums sum_k (OFFSET + q) x of rows lo and hi ([R, W, 32] each, d0..d3 of
    tile a, then of tile b) and sum_k x of the lane's two tokens ([1, W, 32] each) of each tile
    of 8 tokens; INT_ZEROS, sum_k (q - zero) x and no sums of x (``zero_lo`` and ``zero_hi``:
    :func:`_zero_pair` of the rows). ``lo`` and ``hi`` are a lane's four words of each row, ``xa``
    and ``xb`` a tile's activations (four words of 8, from :func:`_x_loads`)."""
    zero = tl.zeros([R, W, 32], dtype=tl.float32)
    da0, da1, da2, da3 = zero, zero, zero, zero
    db0, db1, db2, db3 = zero, zero, zero, zero
    xs_zero = tl.zeros([1, W, 32], dtype=tl.float32)
    xsa0, xsa1, xsb0, xsb1 = xs_zero, xs_zero, xs_zero, xs_zero
    for i in tl.static_range(4):
        l0, l1, l2, l3 = _codes(lo[i], zero_lo, X_BF16, INT_ZEROS)
        h0, h1, h2, h3 = _codes(hi[i], zero_hi, X_BF16, INT_ZEROS)
        da0, da1, da2, da3, xsa0, xsa1 = _word_mmas(l0, l1, l2, l3, h0, h1, h2, h3, xa[i], da0, da1, da2, da3, xsa0,
                                                    xsa1, X_BF16, INT_ZEROS, R, W)
        if TILES == 2:
            db0, db1, db2, db3, xsb0, xsb1 = _word_mmas(l0, l1, l2, l3, h0, h1, h2, h3, xb[i], db0, db1, db2, db3,
                                                        xsb0, xsb1, X_BF16, INT_ZEROS, R, W)
    return da0, da1, da2, da3, xsa0, xsa1, db0, db1, db2, db3, xsb0, xsb1


@triton.jit
def _word_mmas(l0, l1, l2, l3, h0, h1, h2, h3, x_words, d0, d1, d2, d3, xs0, xs1, X_BF16: tl.constexpr,
               INT_ZEROS: tl.constexpr, R: tl.constexpr, W: tl.constexpr):
    """The two MMAs of one word of codes a lane holds per row (its codes in l0..l3 and h0..h3,
    from :func:`_codes`) and one tile of tokens, and (not INT_ZEROS) the two all-ones MMAs that
    sum x alike."""
    b0, b1, b2, b3 = _x_pairs(x_words[0], x_words[1], x_words[2], x_words[3])
    d0, d1, d2, d3 = _mma(l0, h0, l1, h1, tl.broadcast_to(b0, [R, W, 32]), tl.broadcast_to(b1, [R, W, 32]),
                          d0, d1, d2, d3, X_BF16, R, W)
    d0, d1, d2, d3 = _mma(l2, h2, l3, h3, tl.broadcast_to(b2, [R, W, 32]), tl.broadcast_to(b3, [R, W, 32]),
                          d0, d1, d2, d3, X_BF16, R, W)
    if not INT_ZEROS:
        ones = tl.full([1, W, 32], ONES_BF16 if X_BF16 else ONES_F16, tl.int32)
        xs0, xs1, _, _ = _mma(ones, ones, ones, ones, b0, b1, xs0, xs1, xs0, xs1, X_BF16, 1, W)
        xs0, xs1, _, _ = _mma(ones, ones, ones, ones, b2, b3, xs0, xs1, xs0, xs1, X_BF16, 1, W)
    return d0, d1, d2, d3, xs0, xs1


@triton.jit
def _scaled(acc0, acc1, acc2, acc3, d0, d1, d2, d3, xs0, xs1, s_lo, s_hi, zz_lo, zz_hi, INT_ZEROS: tl.constexpr):
    """acc += scale * (sum (OFFSET + q) x - (OFFSET + zero) sum x), per row and token (INT_ZEROS:
    acc += scale * sum (q - zero) x)."""
    if INT_ZEROS:
        acc0 += s_lo * d0
        acc1 += s_lo * d1
        acc2 += s_hi * d2
        acc3 += s_hi * d3
    else:
        acc0 += s_lo * (d0 + zz_lo * xs0)
        acc1 += s_lo * (d1 + zz_lo * xs1)
        acc2 += s_hi * (d2 + zz_hi * xs0)
        acc3 += s_hi * (d3 + zz_hi * xs1)
    return acc0, acc1, acc2, acc3


@triton.autotune(
    configs=_CONFIGS_INTERPRET if interpreting() else _CONFIGS,
    key=["N", "K", "GROUP", "GATED", "TILES"],
    prune_configs_by={"early_config_prune": _prune},
    do_bench=graph_bench,
)
@triton.jit
def _w4a16_mma_kernel(
    x_ptr, p_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_pn, stride_sn, stride_sg, stride_om,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, X_BF16: tl.constexpr, SCALE_FP32: tl.constexpr, GATED: tl.constexpr,
    INT_ZEROS: tl.constexpr, TILES: tl.constexpr, ROW_BLOCKS: tl.constexpr, WARPS: tl.constexpr,
    STEP_CHUNKS: tl.constexpr, L2_256B: tl.constexpr, PDL: tl.constexpr,
):
    # Tensors are [ROW_BLOCKS, WARPS, 32] (per row block) or [1, WARPS, 32] (shared by a warp's
    # blocks: activations, sums of x): one element a lane, lane l of warp w holding (., w, l), as
    # Triton's default layout lays them out (no tl.load, whose layout could differ, feeds them);
    # the row-block axis stays in-thread. A step, warp w takes STEP_CHUNKS chunks, the program's
    # warps side by side, so a row's STEP_CHUNKS * WARPS * 64 bytes are read together.
    # GATED: N is the output's width; the first half of the blocks are gate rows and the second
    # the up rows N further, and the program stores silu(gate) * up.
    R: tl.constexpr = ROW_BLOCKS
    W: tl.constexpr = WARPS
    S: tl.constexpr = STEP_CHUNKS
    pid = tl.program_id(0)
    lane = tl.arange(0, 32)[None, None, :]
    warp = tl.arange(0, W)[None, :, None]
    block = tl.arange(0, R)[:, None, None]
    quad = lane // 4
    if GATED:
        HALF: tl.constexpr = R // 2
        out_lo = pid * 16 * HALF + (block % HALF) * 16 + quad
        up = (block // HALF) * N
    else:
        out_lo = pid * 16 * R + block * 16 + quad
        up = block * 0
    out_hi = out_lo + 8
    live_lo = out_lo < N
    live_hi = out_hi < N
    row_lo = tl.where(live_lo, out_lo, 0) + up
    row_hi = tl.where(live_hi, out_hi, 0) + up
    lane_words = 4 * (lane % 4)
    words = p_ptr.to(tl.pointer_type(tl.int32))
    # Rows and chunks start at multiples of 16 words (K is a multiple of 128): 16-byte loads.
    # Offsets are int32 (the launcher checks that the weights' words fit).
    row_words = tl.multiple_of(stride_pn // 4, 16)
    lo_words = row_lo * row_words + lane_words
    hi_words = row_hi * row_words + lane_words
    lo_scales = row_lo * stride_sn
    hi_scales = row_hi * stride_sn
    # Lane l's token in tile t is 8 t + l // 4 (token 0's row past M, zeroed); its 32 activations
    # of a chunk are the k of its words.
    x_words = x_ptr.to(tl.pointer_type(tl.int32))
    x_row = tl.multiple_of(stride_xm // 2, 16)
    token_a = quad + warp * 0
    token_b = token_a + 8
    keep_a = tl.where(token_a < M, -1, 0)
    keep_b = tl.where(token_b < M, -1, 0)
    x_ptrs_a = x_words + tl.where(token_a < M, token_a, 0).to(tl.int64) * x_row + 4 * lane_words
    x_ptrs_b = x_words + tl.where(token_b < M, token_b, 0).to(tl.int64) * x_row + 4 * lane_words

    n_chunks = K // CHUNK
    n_steps = tl.cdiv(n_chunks, W * S)
    acc0 = tl.zeros([R, W, 32], dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    acc4 = acc0
    acc5 = acc0
    acc6 = acc0
    acc7 = acc0
    # The next step's weights are loaded before this one's arithmetic (a register double buffer);
    # the first step's are read while the previous kernel finishes, activations after it has.
    # Program p starts at step p % n_steps and wraps around, so that the programs in flight do
    # not all read the same columns of their rows at once (1-2% faster on the H100 at 8192 x 8192
    # and 4096 x 4096, 16 tokens, and 28672 x 8192, 8 tokens, within 0.5% elsewhere; an interleaved
    # A/B of an experimental copy of this kernel, docs/experiments/w4a16-mma-variants.patch).
    rot = pid % n_steps
    first = (rot * W + warp) * S
    cur0 = _chunk_loads(words, s_ptr, z_ptr, lo_words, hi_words, lo_scales, hi_scales, first, n_chunks, stride_sg,
                        GROUP, SCALE_FP32, L2_256B)
    cur1 = _chunk_loads(words, s_ptr, z_ptr, lo_words, hi_words, lo_scales, hi_scales, first + 1, n_chunks, stride_sg,
                        GROUP, SCALE_FP32, L2_256B) if S == 2 else cur0
    wait_prior_grid(PDL, False)
    _prefetch_step(x_ptrs_a, x_ptrs_b, first, n_chunks, TILES, S)
    for step in range(0, n_steps):
        chunk = (_wrap(step + rot, n_steps) * W + warp) * S
        following = (_wrap(step + 1 + rot, n_steps) * W + warp) * S
        next0 = _chunk_loads(words, s_ptr, z_ptr, lo_words, hi_words, lo_scales, hi_scales, following, n_chunks,
                             stride_sg, GROUP, SCALE_FP32, L2_256B)
        next1 = _chunk_loads(words, s_ptr, z_ptr, lo_words, hi_words, lo_scales, hi_scales, following + 1, n_chunks,
                             stride_sg, GROUP, SCALE_FP32, L2_256B) if S == 2 else next0
        _prefetch_step(x_ptrs_a, x_ptrs_b, following, n_chunks, TILES, S)
        acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _chunk_step(
            cur0, chunk, n_chunks, x_ptrs_a, x_ptrs_b, keep_a, keep_b, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7,
            X_BF16, INT_ZEROS, TILES, R, W)
        if S == 2:
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _chunk_step(
                cur1, chunk + 1, n_chunks, x_ptrs_a, x_ptrs_b, keep_a, keep_b, acc0, acc1, acc2, acc3, acc4, acc5,
                acc6, acc7, X_BF16, INT_ZEROS, TILES, R, W)
        cur0 = next0
        cur1 = next1
    launch_dependents(PDL)

    token = 2 * (lane % 4)
    # The warps' partial sums added in one reduction a tile (one a tensor took 39 barriers at two
    # tiles): 5-20% faster on the H100 at every shape measured but 8192 x 8192 at 16 tokens, 3%
    # slower there (24.0 against 24.8 µs; ptxas schedules the main loop differently, same counts).
    sum0, sum1, sum2, sum3 = _split4(tl.sum(_join4(acc0, acc1, acc2, acc3), axis=1))
    _store_tile(out_ptr, bias_ptr, sum0, sum1, sum2, sum3, token, out_lo, row_lo, live_lo, out_hi, row_hi, live_hi,
                M, stride_om, HAS_BIAS, GATED, R)
    if TILES == 2:
        sum4, sum5, sum6, sum7 = _split4(tl.sum(_join4(acc4, acc5, acc6, acc7), axis=1))
        _store_tile(out_ptr, bias_ptr, sum4, sum5, sum6, sum7, token + 8, out_lo, row_lo, live_lo, out_hi, row_hi,
                    live_hi, M, stride_om, HAS_BIAS, GATED, R)


@triton.jit
def _join4(a, b, c, d):
    """Four tensors of one shape stacked on two new trailing axes (of 2)."""
    return tl.join(tl.join(a, b), tl.join(c, d))


@triton.jit
def _split4(t):
    """:func:`_join4` undone."""
    ab, cd = tl.split(t)
    a, b = tl.split(ab)
    c, d = tl.split(cd)
    return a, b, c, d


@triton.jit
def _wrap(step, n_steps):
    """``step`` mod ``n_steps`` for step < 2 n_steps (cheaper than %: the quotient costs registers)."""
    return tl.where(step >= n_steps, step - n_steps, step)


@triton.jit
def _prefetch_step(x_ptrs_a, x_ptrs_b, chunk, n_chunks, TILES: tl.constexpr, S: tl.constexpr):
    """L1 prefetch of the activations of a step's chunks, each tile of tokens."""
    _prefetch_x(x_ptrs_a, chunk, n_chunks)
    if TILES == 2:
        _prefetch_x(x_ptrs_b, chunk, n_chunks)
    if S == 2:
        _prefetch_x(x_ptrs_a, chunk + 1, n_chunks)
        if TILES == 2:
            _prefetch_x(x_ptrs_b, chunk + 1, n_chunks)


@triton.jit
def _chunk_step(loaded, chunk, n_chunks, x_ptrs_a, x_ptrs_b, keep_a, keep_b, acc0, acc1, acc2, acc3, acc4, acc5, acc6,
                acc7, X_BF16: tl.constexpr, INT_ZEROS: tl.constexpr, TILES: tl.constexpr, R: tl.constexpr,
                W: tl.constexpr):
    """One chunk (its weights, scales and zeros ``loaded`` by _chunk_loads) added to the
    accumulators of tile a (acc0..3) and b (acc4..7)."""
    lo, hi, s_lo, s_hi, z_lo, z_hi = loaded
    xa = _x_loads(x_ptrs_a, chunk, n_chunks, keep_a)
    xb = _x_loads(x_ptrs_b, chunk, n_chunks, keep_b) if TILES == 2 else xa
    # The rows' zeros as their path uses them: subtracted from the codes as 16-bit pairs
    # (INT_ZEROS, read by _codes), or -(OFFSET + zero) against the sums of x (read by _scaled).
    if INT_ZEROS:
        zero_lo, zero_hi = _zero_pair(z_lo, X_BF16), _zero_pair(z_hi, X_BF16)
    else:
        zero_lo, zero_hi = -(_offset(X_BF16) + z_lo), -(_offset(X_BF16) + z_hi)
    da0, da1, da2, da3, xsa0, xsa1, db0, db1, db2, db3, xsb0, xsb1 = _chunk_sums(lo, hi, zero_lo, zero_hi, xa, xb,
                                                                                  X_BF16, INT_ZEROS, TILES, R, W)
    acc0, acc1, acc2, acc3 = _scaled(acc0, acc1, acc2, acc3, da0, da1, da2, da3, xsa0, xsa1, s_lo, s_hi, zero_lo,
                                     zero_hi, INT_ZEROS)
    if TILES == 2:
        acc4, acc5, acc6, acc7 = _scaled(acc4, acc5, acc6, acc7, db0, db1, db2, db3, xsb0, xsb1, s_lo, s_hi, zero_lo,
                                         zero_hi, INT_ZEROS)
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7


@triton.jit
def _store_tile(out_ptr, bias_ptr, sum0, sum1, sum2, sum3, token, out_lo, row_lo, live_lo, out_hi, row_hi, live_hi,
                M, stride_om, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, R: tl.constexpr):
    """Stores a lane's tokens ``token`` and + 1 of rows lo and hi from the sums over the warps
    ([R, 32] each, the order of the accumulators)."""
    _store_rows(out_ptr, bias_ptr, sum0, sum1, token, out_lo, row_lo, live_lo, M, stride_om, HAS_BIAS, GATED, R)
    _store_rows(out_ptr, bias_ptr, sum2, sum3, token, out_hi, row_hi, live_hi, M, stride_om, HAS_BIAS, GATED, R)


@triton.jit
def _store_rows(out_ptr, bias_ptr, even, odd, token, out_rows, rows, live, M, stride_om, HAS_BIAS: tl.constexpr,
                GATED: tl.constexpr, R: tl.constexpr):
    """[R, 32] sums of tokens ``token`` (even) and + 1 (odd) -> out[token, out_row] (gated: of the
    first R / 2 blocks, silu(gate) * up with the second half)."""
    out_rows = tl.reshape(out_rows, [R, 32])
    rows = tl.reshape(rows, [R, 32])
    live = tl.reshape(live, [R, 32])
    token = tl.reshape(token, [1, 32])
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=live, other=0.0).to(tl.float32)
        even += bias
        odd += bias
    if GATED:
        even = _gate_up(even, R)
        odd = _gate_up(odd, R)
        out_rows = tl.split(tl.permute(tl.reshape(out_rows, [2, R // 2, 32]), [1, 2, 0]))[0]
        live = tl.split(tl.permute(tl.reshape(live.to(tl.int32), [2, R // 2, 32]), [1, 2, 0]))[0] != 0
    ptrs = out_ptr + token.to(tl.int64) * stride_om + out_rows
    tl.store(ptrs, even.to(out_ptr.dtype.element_ty), mask=live & (token < M))
    tl.store(ptrs + stride_om, odd.to(out_ptr.dtype.element_ty), mask=live & (token + 1 < M))


@triton.jit
def _gate_up(y, R: tl.constexpr):
    """[R, 32] sums, gate blocks then up blocks -> silu(gate) * up, [R / 2, 32]."""
    gate, up = tl.split(tl.permute(tl.reshape(y, [2, R // 2, 32]), [1, 2, 0]))
    return gate * tl.sigmoid(gate) * up


def supports(x_dtype: torch.dtype, m: int, group_size: int, n: int, k: int) -> bool:
    """Whether this kernel serves ``m`` tokens of ``x_dtype`` (16-bit, at most MAX_M) against an
    [n, k] weight with groups of ``group_size`` (whose int32 words it addresses with 32-bit offsets)."""
    return (x_dtype in (torch.bfloat16, torch.float16) and 1 <= m <= MAX_M and group_size % CHUNK_CODES == 0
            and n * k // 8 < 2**31)


def gemm_w4a16_mma(x, packed, scales, zeros, group_size: int, bias=None, gated: bool = False,
                   integer_zeros: bool = False) -> torch.Tensor:
    """The W4A16 product of :func:`kernels.gemm_w4a16.gemm_w4a16` (arguments checked there) on this
    kernel: ``x`` [M, K] bf16 or fp16 with M <= 16, ``group_size`` a multiple of 128. Scales and
    zeros may be row- or group-major, with the same strides. ``integer_zeros``: the caller vouches
    that every zero is an integer in 0..15 (the runtime's quantizer rounds them); the kernel then
    subtracts them from the codes in 16 bits, exactly, instead of summing x with a second MMA (0.1-7%
    faster on the H100: bench/results/w4a16-mma-zeros-h100.json); fractional zeros would give wrong sums."""
    if not supports(x.dtype, x.shape[0], group_size, packed.shape[0], x.shape[1]):
        raise ValueError(f"the mma kernel serves 1..{MAX_M} bf16 or fp16 tokens, groups of a multiple of "
                         f"{CHUNK_CODES} and under 2**31 words of weights; got x {x.dtype} with M={x.shape[0]}, "
                         f"group_size={group_size}, packed {list(packed.shape)}")
    m, k = x.shape
    n = packed.shape[0]
    n_out = n // 2 if gated else n
    # 16-byte loads of the weights and x words: aligned copies of odd views.
    x = x.contiguous() if x.data_ptr() % 16 == 0 else x.clone()
    packed = packed.contiguous() if packed.data_ptr() % 16 == 0 else packed.clone()
    if zeros.stride() != scales.stride():
        scales, zeros = scales.contiguous(), zeros.contiguous()
    out = torch.empty(m, n_out, dtype=x.dtype, device=x.device)
    rows_per_program = 8 if gated else 16
    launch(
        _w4a16_mma_kernel, lambda meta: (cdiv(n_out, rows_per_program * meta["ROW_BLOCKS"]),),
        x, packed, scales, zeros, bias if bias is not None else scales, out, m, n_out, k, x.stride(0),
        packed.stride(0), scales.stride(0), scales.stride(1), out.stride(0), GROUP=group_size,
        HAS_BIAS=bias is not None, X_BF16=x.dtype == torch.bfloat16, SCALE_FP32=scales.dtype == torch.float32,
        GATED=gated, INT_ZEROS=integer_zeros, TILES=1 if m <= 8 else 2,
        **pdl_args(x.device),
    )
    return out
