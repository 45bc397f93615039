"""Activation quantization to fp8 e4m3 or int8: per-token dynamic or per-tensor static scales."""
import torch
import triton
import triton.language as tl

from kernels._launch import cdiv, check_2d, check_dtype, interpreting, launch, pdl_args, use_triton, wait_prior_grid

FMAX = {"fp8_e4m3": 448.0, "int8": 127.0}
QDTYPE = {"fp8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}
# Floor on amax so an all-zero token gets a finite, positive scale.
AMAX_EPS = 1e-12
# Rows up to this many elements stay in registers between the amax and the quantize step
# (x read once); longer rows are read twice, the second time from L2 (one row <= 56 KiB bf16).
MAX_SINGLE_BLOCK = 8192
LOOP_BLOCK_K = 4096
# Adding then subtracting 1.5 * 2**23 rounds an fp32 |y| <= 2**22 to the nearest integer, ties
# to even (the hardware rounding mode); libdevice rint would do the same but the CPU interpreter
# has no libdevice.
ROUND_MAGIC = tl.constexpr(12582912.0)
_AMAX_EPS = tl.constexpr(AMAX_EPS)


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
        # Divide by a tensor: CUDA torch turns division by a Python scalar into multiplication
        # by its reciprocal, which differs from IEEE division (the kernel's) in the last bit.
        scale = amax.clamp(min=AMAX_EPS) / torch.full_like(amax, fmax)
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


@triton.jit
def _round_to_e4m3_grid(y):
    # Rounds |y| <= 448 to the nearest e4m3 value (ties to even) in fp32, so the cast that
    # follows is exact: what the GPU's cvt does in one instruction. The CPU interpreter's cast
    # does not carry a mantissa overflow into the exponent (127.4 -> 64 instead of 128), so the
    # interpreter runs this instead.
    # Adding 2**(s + 23), where 2**s is the e4m3 spacing at |y|, rounds |y| to that spacing.
    a = tl.abs(y)
    biased_exp = (a.to(tl.uint32, bitcast=True) >> 23).to(tl.int32)
    # e4m3 keeps 3 mantissa bits; below its smallest normal 2**-6 the spacing stays 2**-9.
    spacing_exp = tl.maximum(biased_exp - 3, 127 - 9)
    magic = ((spacing_exp + 23) << 23).to(tl.float32, bitcast=True)
    r = (a + magic) - magic
    return tl.where(y < 0, -r, r)


@triton.jit
def _quantize_block(x, scale, inv_scale, FMAX: tl.constexpr, IS_INT8: tl.constexpr, EXACT_EMULATION: tl.constexpr):
    # x / scale, correctly rounded as the reference's IEEE division. On the GPU: x times the
    # reciprocal, then one FMA correction step (Markstein), which gives the correctly rounded
    # quotient from a correctly rounded reciprocal; 3 instructions where div_rn costs ~10 and
    # made the kernel ALU-bound on large inputs. The CPU interpreter has no fused multiply-add
    # (numpy rounds twice), so there it divides.
    if EXACT_EMULATION:
        y = tl.math.div_rn(x, scale)
    else:
        q0 = x * inv_scale
        y = tl.fma(tl.fma(-q0, scale, x), inv_scale, q0)
    y = tl.minimum(tl.maximum(y, -FMAX), FMAX)
    if IS_INT8:
        q = ((y + ROUND_MAGIC) - ROUND_MAGIC).to(tl.int8)
    elif EXACT_EMULATION:
        q = _round_to_e4m3_grid(y).to(tl.float8e4nv)
    else:
        # The GPU's cvt rounds to nearest even, as torch's cast does.
        q = y.to(tl.float8e4nv)
    return q


@triton.jit
def _act_quant_kernel(
    x_ptr, q_ptr, scale_ptr, amax_ptr, nsat_ptr,
    M, K, stride_xm, stride_qm,
    FMAX: tl.constexpr, IS_INT8: tl.constexpr, STATIC: tl.constexpr,
    BLOCK_K: tl.constexpr, SINGLE: tl.constexpr, ROWS: tl.constexpr, EXACT_EMULATION: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
    # ROWS tokens per program: amax, scale, quantized row and saturation count in one pass. Several
    # rows per program put more loads in flight before the amax has to wait for them.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    mask_r = rows < M
    rows = tl.where(mask_r, rows, 0).to(tl.int64)
    x_rows = x_ptr + rows[:, None] * stride_xm
    q_rows = q_ptr + rows[:, None] * stride_qm
    offs = tl.arange(0, BLOCK_K)[None, :]
    if SINGLE:
        mask = mask_r[:, None] & (offs < K)
        x = tl.load(x_rows + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)
    else:
        run_max = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = mask_r[:, None] & (k0 + offs < K)
            xk = tl.load(x_rows + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            run_max = tl.maximum(run_max, tl.abs(xk))
        amax = tl.max(run_max, axis=1)
    tl.store(amax_ptr + rows, amax, mask=mask_r)
    if STATIC:
        scale = tl.load(scale_ptr + tl.zeros([ROWS], dtype=tl.int32))
        limit = scale * FMAX
    else:
        scale = tl.math.div_rn(tl.maximum(amax, _AMAX_EPS), FMAX)
        tl.store(scale_ptr + rows, scale, mask=mask_r)
    inv_scale = tl.math.div_rn(tl.full([ROWS], 1.0, tl.float32), scale)
    if SINGLE:
        tl.store(q_rows + offs, _quantize_block(x, scale[:, None], inv_scale[:, None], FMAX, IS_INT8, EXACT_EMULATION), mask=mask)
        if STATIC:
            n_sat = tl.sum((tl.abs(x) > limit[:, None]).to(tl.int32), axis=1)
    else:
        sat = tl.zeros([ROWS, BLOCK_K], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            mask = mask_r[:, None] & (k0 + offs < K)
            xk = tl.load(x_rows + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_rows + k0 + offs, _quantize_block(xk, scale[:, None], inv_scale[:, None], FMAX, IS_INT8, EXACT_EMULATION), mask=mask)
            if STATIC:
                sat += (tl.abs(xk) > limit[:, None]).to(tl.int32)
        if STATIC:
            n_sat = tl.sum(sat, axis=1)
    if STATIC:
        tl.store(nsat_ptr + rows, n_sat, mask=mask_r)
    else:
        # A dynamic scale covers its token's amax: nothing saturates (see the reference). The
        # kernel writes the 0 itself, which saves a separate fill launch per call.
        if tl.program_id(0) == 0:
            tl.store(nsat_ptr, 0)


def _num_warps(elems: int) -> int:
    # One warp per 512 elements of the program's block (16 per thread), between 1 and 16.
    return min(16, max(1, elems // 512))


def act_quant_triton(x: torch.Tensor, fmt: str, scale: torch.Tensor | None = None, *,
                     num_warps: int | None = None, rows: int | None = None):
    """Launches :func:`_act_quant_kernel`; same contract as :func:`act_quant` (``num_warps`` and
    ``rows``, tokens per program, override the heuristics, for bench/kernels.py)."""
    _check(x, fmt, scale)
    m, k = x.shape
    if m == 0 or k == 0:
        return act_quant_reference(x, fmt, scale)
    if x.stride(1) != 1:
        x = x.contiguous()
    q = torch.empty(m, k, dtype=QDTYPE[fmt], device=x.device)
    amax = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    static = scale is not None
    if static:
        scale = _static_scale(scale, x)
        row_sat = torch.empty(m, dtype=torch.int32, device=x.device)
    else:
        scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
        row_sat = torch.empty((), dtype=torch.int64, device=x.device)  # the kernel writes 0
    single = k <= MAX_SINGLE_BLOCK
    block_k = triton.next_power_of_2(k) if single else LOOP_BLOCK_K
    # One token per program by default: on the H100, 2, 4 and 8 rows per program were each
    # slower at every M measured (bench/results/kernels-h100.json, fp8_dynamic_us_by_rows_per_program).
    rows = triton.next_power_of_2(rows or 1)
    launch(
        _act_quant_kernel, (cdiv(m, rows),),
        x, q, scale, amax, row_sat, m, k, x.stride(0), q.stride(0),
        FMAX=FMAX[fmt], IS_INT8=fmt == "int8", STATIC=static, BLOCK_K=block_k, SINGLE=single, ROWS=rows,
        EXACT_EMULATION=interpreting(),
        num_warps=num_warps or _num_warps(rows * block_k), **pdl_args(x.device),
    )
    n_saturated = row_sat.sum(dtype=torch.int64) if static else row_sat
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
    if use_triton(x, backend):
        return act_quant_triton(x, fmt, scale)
    return act_quant_reference(x, fmt, scale)
