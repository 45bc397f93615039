"""Each Triton kernel against its pure-torch reference (and float64) on fresh random inputs.

Run on the CPU through Triton's interpreter and, marked `gpu`, on CUDA. Known interpreter
limits decide the CPU dtypes: bf16 arithmetic is wrong there, so bf16 runs on the GPU only.
"""
import pytest
import torch

import kernels.act_quant as act_quant_mod
import kernels.gemm_w4a16 as gemm_w4a16_mod
import kernels._w8a8 as w8a8_mod
from kernels import _launch
from kernels._launch import SPLIT_K_LOCKS, only_config, split_k_locks
from kernels.act_quant import act_quant, act_quant_reference
from kernels.decode_attention import decode_attention, decode_attention_reference
from kernels.gemm_fp8 import gemm_fp8, gemm_fp8_reference
from kernels.gemm_int8 import gemm_int8, gemm_int8_reference
from kernels.gemm_w4a16 import (
    dequantize_w4_reference,
    dequantize_w4_triton,
    gemm_w4a16,
    gemm_w4a16_reference,
    quantize_w4_reference,
)

# (M, K) for activation quantization and (M, N, K) for GEMMs: odd sizes that are not
# multiples of any block, M = 1, and one M above the decode bucket.
ACT_SHAPES = [(1, 64), (7, 130), (33, 257)]
GEMM_SHAPES = [(1, 33, 64), (7, 96, 130), (16, 70, 256), (33, 130, 96)]
W4_SHAPES = [(1, 33, 128, 64), (7, 96, 256, 128), (40, 70, 256, 128), (3, 20, 96, 32)]
# Larger shapes that only the GPU runs (the interpreter keeps every dim <= 256).
GPU_GEMM_SHAPES = [(1, 4096, 4096), (3, 4096, 4104), (16, 1000, 2048), (100, 1000, 2048), (300, 2048, 1032)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error in float64; NaN or inf anywhere makes every bound fail."""
    a, b = a.double().cpu(), b.double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    return float((a - b).norm() / b.norm())


def with_outliers(m: int, k: int, device: str, dtype=torch.float32) -> torch.Tensor:
    """Gaussian activations with ~2% of entries 100x larger, as LLM activation outliers."""
    x = torch.randn(m, k, device=device)
    idx = torch.randint(0, m * k, (max(1, m * k // 50),), device=device)
    x.view(-1)[idx] *= 100.0
    return x.to(dtype)


def e4m3_step(v: torch.Tensor) -> torch.Tensor:
    """Spacing of e4m3 values at |v| (3 mantissa bits; 2**-9 below the smallest normal)."""
    exp = torch.floor(torch.log2(v.abs().clamp(min=2.0**-6)))
    return torch.exp2(exp - 3)


def x_dtypes(device: str):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


# --- activation quantization -------------------------------------------------------------


@pytest.mark.parametrize("m, k", ACT_SHAPES)
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
@pytest.mark.parametrize("static", [False, True])
def test_act_quant_matches_reference(device, m, k, fmt, static):
    for dtype in x_dtypes(device):
        x = with_outliers(m, k, device, dtype)
        scale = torch.tensor(0.05, device=device) if static else None
        q, s, amax, n_sat = act_quant(x, fmt, scale, backend="triton")
        q_ref, s_ref, amax_ref, n_sat_ref = act_quant_reference(x, fmt, scale)
        assert q.dtype == q_ref.dtype and q.shape == (m, k)
        assert torch.equal(amax, amax_ref) and torch.equal(s, s_ref)
        assert n_sat.dtype == torch.int64 and n_sat.dim() == 0 and int(n_sat) == int(n_sat_ref)
        if static:
            assert int(n_sat) > 0  # the outliers exceed 0.05 * fmax
        qf, qf_ref = q.float(), q_ref.float()
        assert not qf.isnan().any()
        if fmt == "int8":
            assert torch.equal(q, q_ref)
        else:
            assert ((qf - qf_ref).abs() <= e4m3_step(qf_ref)).all()
        # Dequantized error against the input: half a step per element at most.
        bound = 0.07 if fmt == "fp8_e4m3" else (0.3 if static else 0.05)
        assert rel_err(qf * s, x.float().clamp(-s * FMAX[fmt], s * FMAX[fmt])) < bound


FMAX = {"fp8_e4m3": 448.0, "int8": 127.0}


def test_act_quant_long_rows_and_subnormals(device, monkeypatch):
    # Rows longer than the single-block limit take the two-pass loop; shrink the limit so the
    # interpreter reaches it within its size budget.
    monkeypatch.setattr(act_quant_mod, "MAX_SINGLE_BLOCK", 64)
    monkeypatch.setattr(act_quant_mod, "LOOP_BLOCK_K", 32)
    x = with_outliers(5, 200, device)
    for fmt, scale in [("fp8_e4m3", None), ("int8", None), ("fp8_e4m3", torch.tensor(0.02, device=device))]:
        got = act_quant(x, fmt, scale, backend="triton")
        ref = act_quant_reference(x, fmt, scale)
        assert torch.equal(got[0].float(), ref[0].float())
        assert torch.equal(got[2], ref[2]) and int(got[3]) == int(ref[3])
    # A static scale far above the data puts every value in e4m3's subnormal range.
    tiny = torch.rand(4, 96, device=device) * 2.0**-5
    got = act_quant(tiny, "fp8_e4m3", torch.tensor(1.0, device=device), backend="triton")[0]
    assert torch.equal(got.float(), act_quant_reference(tiny, "fp8_e4m3", torch.tensor(1.0))[0].float().to(device))


@pytest.mark.parametrize("loop", [False, True])
def test_act_quant_several_rows_per_program(device, monkeypatch, loop):
    # Large M packs rows into one program; 13 rows in blocks of 4 leave a ragged last block.
    if loop:
        monkeypatch.setattr(act_quant_mod, "MAX_SINGLE_BLOCK", 64)
        monkeypatch.setattr(act_quant_mod, "LOOP_BLOCK_K", 32)
    x = with_outliers(13, 100, device, torch.float16)
    for fmt, scale in [("fp8_e4m3", None), ("int8", None), ("int8", torch.tensor(0.03, device=device))]:
        got = act_quant_mod.act_quant_triton(x, fmt, scale, rows=4)
        ref = act_quant_reference(x, fmt, scale)
        assert torch.equal(got[0].float(), ref[0].float())
        assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2]) and int(got[3]) == int(ref[3])
        if scale is not None:
            assert int(got[3]) > 0


# --- W8A8 GEMMs ---------------------------------------------------------------------------

GEMMS = {
    "fp8_e4m3": (gemm_fp8, gemm_fp8_reference),
    "int8": (gemm_int8, gemm_int8_reference),
}


def _w8a8_inputs(m, n, k, fmt, device, static=False):
    x, w = with_outliers(m, k, device), torch.randn(n, k, device=device) * 0.05
    xq, xs, _, _ = act_quant_reference(x, fmt, (x.abs().amax() / FMAX[fmt]).reshape(1, 1) if static else None)
    wq, ws, _, _ = act_quant_reference(w, fmt)
    return x, w, xq, xs, wq, ws


def _w8a8_bound(fmt, out_dtype, device):
    # The int32 sum is exact, fp8's is fp32 (wgmma's fast accumulation on the GPU); what is
    # left is the output rounding: 2**-8 for bf16, 2**-11 for fp16.
    base = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_dtype]
    return base + (1e-3 if fmt == "fp8_e4m3" and device == "cuda" else 0.0)


@pytest.mark.parametrize("m, n, k", GEMM_SHAPES)
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_gemm_matches_reference(device, m, n, k, fmt):
    gemm, reference = GEMMS[fmt]
    out_dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])
    for out_dtype, static, with_bias in zip(out_dtypes, [False, True, False], [True, False, True]):
        x, w, xq, xs, wq, ws = _w8a8_inputs(m, n, k, fmt, device, static)
        bias = torch.randn(n, device=device) if with_bias else None
        out = gemm(xq, xs, wq, ws, bias, out_dtype, backend="triton")
        ref = reference(xq.cpu(), xs.cpu(), wq.cpu(), ws.cpu(), bias.cpu() if with_bias else None, torch.float32)
        assert out.dtype == out_dtype and out.shape == (m, n)
        assert rel_err(out, ref) < _w8a8_bound(fmt, out_dtype, device)
        # Against the unquantized float64 product only the quantization error remains.
        exact = x.double() @ w.double().t() + (bias.double() if with_bias else 0)
        assert rel_err(out, exact) < (0.08 if fmt == "fp8_e4m3" else 0.05)


@pytest.mark.parametrize("m, path", [(1, "gemv"), (6, "gemv"), (3, "swap"), (40, "swap"), (1, "tiled"), (140, "tiled")])
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_every_path_matches_reference(device, m, path, fmt):
    # The dispatcher picks a path by M; each one is forced here, with K not a multiple of any block.
    n, k = 70, 130
    _, reference = GEMMS[fmt]
    x, w, xq, xs, wq, ws = _w8a8_inputs(m, n, k, fmt, device)
    bias = torch.randn(n, device=device)
    qdtype = torch.float8_e4m3fn if fmt == "fp8_e4m3" else torch.int8
    out = w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, bias, torch.float16, qdtype, path=path)
    ref = reference(xq.cpu(), xs.cpu(), wq.cpu(), ws.cpu(), bias.cpu(), torch.float32)
    assert out.dtype == torch.float16 and out.shape == (m, n)
    assert rel_err(out, ref) < _w8a8_bound(fmt, torch.float16, device)


@pytest.mark.parametrize("m", [1, 140])
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_persistent_matches_reference(device, m, fmt):
    # TMA needs 16-byte row strides: K = 144 takes the persistent kernel (and its zero-filled tail
    # of a K block); K = 130 cannot, and falls back to the tiled kernel with the same result.
    n = 70
    _, reference = GEMMS[fmt]
    qdtype = torch.float8_e4m3fn if fmt == "fp8_e4m3" else torch.int8
    for k in (144, 130):
        x, w, xq, xs, wq, ws = _w8a8_inputs(m, n, k, fmt, device)
        assert w8a8_mod.tma_ready(xq, wq) == (k == 144)
        bias = torch.randn(n, device=device)
        out = w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, bias, torch.float16, qdtype, path="persistent")
        ref = reference(xq.cpu(), xs.cpu(), wq.cpu(), ws.cpu(), bias.cpu(), torch.float32)
        assert out.dtype == torch.float16 and out.shape == (m, n)
        assert rel_err(out, ref) < _w8a8_bound(fmt, torch.float16, device)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_split_k_reduces_serially(device, fmt):
    # Few output tiles and a long K: the swapped kernel splits K, and the last program of each
    # tile sums the splits' partials in split order. Two launches in a row must agree to the
    # bit (the order programs finish in does not enter the sum) and leave every count word at
    # zero for the next launch.
    m, n, k = 5, 96, 256
    assert w8a8_mod.swap_split_k(n)
    _, reference = GEMMS[fmt]
    x, w, xq, xs, wq, ws = _w8a8_inputs(m, n, k, fmt, device)
    bias = torch.randn(n, device=device)
    qdtype = torch.float8_e4m3fn if fmt == "fp8_e4m3" else torch.int8
    first = w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, bias, torch.float32, qdtype, path="swap")
    assert int(split_k_locks(device, 1).abs().sum()) == 0
    second = w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, bias, torch.float32, qdtype, path="swap")
    assert torch.equal(first, second)
    ref = reference(xq.cpu(), xs.cpu(), wq.cpu(), ws.cpu(), bias.cpu(), torch.float32)
    assert rel_err(first, ref) < _w8a8_bound(fmt, torch.float32, device)


def test_split_k_locks_bounds():
    with pytest.raises(ValueError, match="at most"):
        split_k_locks("cpu", SPLIT_K_LOCKS + 1)


def test_w8a8_path_errors():
    xq, xs, _, _ = act_quant_reference(torch.randn(9, 32), "int8")
    wq, ws, _, _ = act_quant_reference(torch.randn(8, 32), "int8")
    with pytest.raises(ValueError, match="path must be one of"):
        w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, None, torch.float16, torch.int8, path="fast")
    with pytest.raises(ValueError, match="at most 8 tokens"):
        w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, None, torch.float16, torch.int8, path="gemv")


@pytest.mark.gpu
@pytest.mark.parametrize("m, n, k", GPU_GEMM_SHAPES)
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_gemm_large_gpu(m, n, k, fmt):
    gemm, reference = GEMMS[fmt]
    x, w, xq, xs, wq, ws = _w8a8_inputs(m, n, k, fmt, "cuda")
    bias = torch.randn(n, device="cuda")
    out = gemm(xq, xs, wq, ws, bias, torch.bfloat16)
    assert rel_err(out, reference(xq, xs, wq, ws, bias, torch.float32)) < _w8a8_bound(fmt, torch.bfloat16, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", range(len(w8a8_mod._CONFIGS_PERSISTENT)))
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_persistent_every_config_gpu(cfg, fmt):
    # GPU tests run the first config only (ONE_CONFIG); each config is forced here, on an output
    # TMA can store (N = 1000: 2000-byte rows) and one it cannot (N = 999), with partial tiles and
    # programs that take more than one tile.
    _, reference = GEMMS[fmt]
    qdtype = torch.float8_e4m3fn if fmt == "fp8_e4m3" else torch.int8
    with only_config(w8a8_mod._w8a8_persistent_kernel, w8a8_mod._CONFIGS_PERSISTENT[cfg]):
        for n in (1000, 999):
            x, w, xq, xs, wq, ws = _w8a8_inputs(8000, n, 1024, fmt, "cuda")
            bias = torch.randn(n, device="cuda")
            out = w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, bias, torch.bfloat16, qdtype, path="persistent")
            ref = reference(xq, xs, wq, ws, bias, torch.float32)
            assert rel_err(out, ref) < _w8a8_bound(fmt, torch.bfloat16, "cuda")


def test_w8a8_persistent_fp8_takes_its_config(monkeypatch):
    # fp8 runs FP8_PERSISTENT untuned; int8 is tuned over every config; a forced config stays.
    monkeypatch.setattr(w8a8_mod, "interpreting", lambda: False)
    monkeypatch.setattr(_launch, "_INTERPRETING", False)
    monkeypatch.setattr(_launch, "ONE_CONFIG", False)
    configs = w8a8_mod._CONFIGS_PERSISTENT
    assert w8a8_mod.FP8_PERSISTENT in configs
    assert w8a8_mod._prune_persistent(configs, {}, IS_INT8=False) == [w8a8_mod.FP8_PERSISTENT]
    assert w8a8_mod._prune_persistent(configs, {}, IS_INT8=True) == configs
    assert w8a8_mod._prune_persistent(configs[:1], {}, IS_INT8=False) == configs[:1]


# --- W4A16 --------------------------------------------------------------------------------


@pytest.mark.parametrize("m, n, k, group", W4_SHAPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_w4a16_gemm_matches_reference(device, m, n, k, group, symmetric):
    w = torch.randn(n, k, device=device)
    packed, scales, zeros = quantize_w4_reference(w, group, symmetric)
    for dtype, with_bias in zip(x_dtypes(device), [True, False, True]):
        x = with_outliers(m, k, device, dtype)
        bias = torch.randn(n, device=device) if with_bias else None
        out = gemm_w4a16(x, packed, scales, zeros, group, bias, backend="triton")
        ref = gemm_w4a16_reference(x.float(), packed, scales, zeros, group, bias)
        assert out.dtype == dtype and out.shape == (m, n)
        # fp32: products in ieee fp32; fp16 / bf16: the dequantized weight and the output are
        # rounded to x.dtype (2**-11 / 2**-8 relative).
        bound = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]
        assert rel_err(out, ref) < bound


@pytest.mark.parametrize("m, path", [(1, "gemv"), (1, "tc"), (20, "tc"), (130, "tc"), (3, "dequant")])
def test_w4a16_every_path_matches_reference(device, m, path):
    # The dispatcher picks a path by M; each one is forced here at sizes it may not get by default.
    # 7 groups: no groups-per-step or split-K count divides it, so every ragged last step runs.
    n, k, group = 72, 224, 32
    w = torch.randn(n, k, device=device)
    packed, scales, zeros = quantize_w4_reference(w, group, False)
    x = with_outliers(m, k, device, torch.float16)
    bias = torch.randn(n, device=device)
    out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, bias, path=path)
    ref = gemm_w4a16_reference(x.float(), packed, scales, zeros, group, bias)
    assert out.dtype == torch.float16 and out.shape == (m, n)
    assert rel_err(out, ref) < 2e-3


@pytest.mark.parametrize("k", [224, 64])
@pytest.mark.parametrize("reg_prefetch", [False, True])
def test_w4a16_tc_with_and_without_register_prefetch(device, monkeypatch, reg_prefetch, k):
    # The autotuner weighs tensor-core configs that load the next step's words ahead and configs
    # that do not; both must match the reference. 7 groups leave a ragged last step; 2 groups in
    # steps of 2 leave the second split empty (its prefetch must add nothing).
    kernel = gemm_w4a16_mod._w4a16_tc_kernel
    config = gemm_w4a16_mod._tc_config(16, 2, 4, 1, groups_per_step=2, reg_prefetch=reg_prefetch)
    monkeypatch.setattr(kernel, "configs", [config])
    monkeypatch.setattr(kernel, "cache", {})
    n, group = 72, 32
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device), group, False)
    x = with_outliers(20, k, device, torch.float16)
    out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, path="tc")
    assert kernel.best_config.kwargs["REG_PREFETCH"] is reg_prefetch
    assert rel_err(out, gemm_w4a16_reference(x.float(), packed, scales, zeros, group)) < 2e-3


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("m", [5, 40])
def test_w4a16_tc_split_k_both_ways(device, monkeypatch, m, split_k, gated):
    # Up to SERIAL_MAX_M tokens split programs store fp32 partials and the last of a tile sums them
    # and stores x.dtype (and, gated, silu(gate) * up), leaving the count words at zero for the
    # next launch; above, they add into an fp32 output zeroed first. Unsplit programs store directly.
    assert 5 <= gemm_w4a16_mod.SERIAL_MAX_M < 40
    kernel = gemm_w4a16_mod._w4a16_tc_kernel
    monkeypatch.setattr(kernel, "configs", [gemm_w4a16_mod._tc_config(16, split_k, 4, 1)])
    monkeypatch.setattr(kernel, "cache", {})
    n, k, group = 2 * 40, 224, 32
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device) * 0.05, group, False)
    bias = torch.randn(n, device=device)
    for _ in range(2):
        x = with_outliers(m, k, device, torch.float16)
        out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, bias, gated=gated, path="tc")
        ref = (_gated_reference(x, packed, scales, zeros, group, bias) if gated
               else gemm_w4a16_reference(x.float(), packed, scales, zeros, group, bias))
        assert out.dtype == torch.float16 and out.shape == (m, n // 2 if gated else n)
        assert rel_err(out, ref) < 2e-3
        assert not split_k_locks(torch.device(device), 1).any()


@pytest.mark.parametrize("path,m", [("gemv", 1), ("tc", 5), ("tc", 20), ("dequant", 3)])
def test_w4a16_reads_group_major_scales(device, path, m):
    # The tensor-core kernel reads scales and zeros by their strides (a group-major view puts one
    # step's rows side by side); the other paths copy them row-major. A column slice of a wider
    # group-major tensor (a fused sibling's view) must read only its own columns.
    n, k, group = 40, 192, 32
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device), group, False)
    wide_s = torch.randn(k // group, n + 24, device=device, dtype=scales.dtype)
    wide_z = torch.randn(k // group, n + 24, device=device, dtype=zeros.dtype)
    wide_s[:, 8:8 + n], wide_z[:, 8:8 + n] = scales.t(), zeros.t()
    s_view, z_view = wide_s[:, 8:8 + n].t(), wide_z[:, 8:8 + n].t()
    assert s_view.stride() == (1, n + 24) and torch.equal(s_view, scales)
    x = with_outliers(m, k, device, torch.float16)
    out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, s_view, z_view, group, path=path)
    assert rel_err(out, gemm_w4a16_reference(x.float(), packed, scales, zeros, group)) < 2e-3


def test_w4a16_gemv_reads_a_misaligned_view(device):
    # The GEMV reads the packed bytes as 16-byte runs of int32 words; a view that starts at an odd
    # byte must still give the right answer (the wrapper copies it to an aligned buffer).
    n, k, group = 40, 256, 64
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device), group, False)
    storage = torch.empty(n * k // 2 + 1, dtype=torch.uint8, device=device)
    view = storage[1:].view(n, k // 2)
    view.copy_(packed)
    x = with_outliers(1, k, device, torch.float16)
    out = gemm_w4a16_mod.gemm_w4a16_triton(x, view, scales, zeros, group, path="gemv")
    assert rel_err(out, gemm_w4a16_reference(x.float(), packed, scales, zeros, group)) < 2e-3


@pytest.mark.parametrize("k", [256, 352])
def test_w4a16_gemv_odd_and_even_step_counts(device, k):
    # The GEMV runs two steps of quads a loop iteration and one more after the loop when the count
    # is odd: 8 quads are 2 steps of 4 (the interpreter's config), 11 are 3, the last one ragged.
    # fp16 reads codes in pairs, fp32 one per shift; both must match the reference.
    n, group = 24, 32
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device), group, False)
    for dtype, bound in [(torch.float16, 2e-3), (torch.float32, 1e-5)]:
        x = with_outliers(1, k, device, dtype)
        out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, path="gemv")
        assert rel_err(out, gemm_w4a16_reference(x.float(), packed, scales, zeros, group)) < bound


# (M, N, K, group): one tile of tokens (M <= 8) and two; N not a whole number of 16-row blocks
# (nor of a program's); 3 chunks of 128 over the interpreter's 2 warps leave one warp a dead step.
W4_MMA_SHAPES = [(1, 40, 384, 128), (5, 33, 256, 256), (9, 70, 384, 128), (16, 24, 128, 128)]
GPU_W4_MMA_SHAPES = [(1, 4096, 4096, 128), (3, 1000, 2048, 128), (16, 4104, 1408, 128), (12, 8192, 1024, 256)]


@pytest.mark.parametrize("m, n, k, group", W4_MMA_SHAPES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("integer_zeros", [False, True])
def test_w4a16_mma_matches_reference(device, m, n, k, group, symmetric, integer_zeros):
    # The interpreter emulates each mma.sync (and each 16-bit subtraction of integer zeros) from
    # PTX's definitions, which checks every index of the kernel's scheme (which lane holds which
    # codes, zeros, x and outputs); the GPU runs the asm. bf16 runs here too: the kernel reads
    # activations as bits and never computes in bf16.
    shapes = W4_MMA_SHAPES if device == "cpu" else GPU_W4_MMA_SHAPES
    m, n, k, group = shapes[W4_MMA_SHAPES.index((m, n, k, group))]
    w = torch.randn(n, k, device=device)
    packed, scales, zeros = quantize_w4_reference(w, group, symmetric)
    for dtype, with_bias in [(torch.float16, True), (torch.bfloat16, False)]:
        x = with_outliers(m, k, device, dtype)
        bias = torch.randn(n, device=device) if with_bias else None
        out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales.to(dtype), zeros.to(dtype), group, bias,
                                               path="mma", integer_zeros=integer_zeros)
        ref = gemm_w4a16_reference(x.float(), packed, scales.to(dtype), zeros.to(dtype), group, bias)
        assert out.dtype == dtype and out.shape == (m, n)
        assert rel_err(out, ref) < {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype], dtype


@pytest.mark.parametrize("m", [1, 11])
def test_w4a16_mma_gated_and_group_major_scales(device, m):
    # Gated: a program's first row blocks are gate rows, the rest the up rows N / 2 further, and
    # 37 outputs are no whole number of either. Scales read by their strides (a group-major view).
    n, k, group = 2 * 37, 256, 128
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device) * 0.05, group, False)
    bias = torch.randn(n, device=device)
    s_view, z_view = scales.t().contiguous().t(), zeros.t().contiguous().t()
    for dtype, integer_zeros in [(torch.float16, False), (torch.bfloat16, True)]:
        x = with_outliers(m, k, device, dtype)
        out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, s_view, z_view, group, bias, gated=True, path="mma",
                                               integer_zeros=integer_zeros)
        assert out.dtype == dtype and out.shape == (m, n // 2)
        bound = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]
        assert rel_err(out, _gated_reference(x, packed, scales, zeros, group, bias)) < bound, dtype
        plain = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, s_view, z_view, group, bias, path="mma",
                                                 integer_zeros=integer_zeros)
        assert rel_err(plain, gemm_w4a16_reference(x.float(), packed, scales, zeros, group, bias)) < bound, dtype


@pytest.mark.parametrize("row_blocks, warps, step_chunks", [(1, 2, 1), (2, 1, 2), (2, 4, 2)])
def test_w4a16_mma_configs(device, row_blocks, warps, step_chunks):
    # One or two row blocks a program; K's 3 chunks over 1, 2 or 4 warps, one or two chunks a
    # warp and step: every layout leaves some warp a dead chunk (zero scale, adds nothing).
    n, k, group = 2 * 37, 384, 128
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device) * 0.05, group, False)
    bias = torch.randn(n, device=device)
    kernel = gemm_w4a16_mod.w4a16_mma._w4a16_mma_kernel
    with only_config(kernel, gemm_w4a16_mod.w4a16_mma._mma_config(row_blocks, warps, step_chunks)):
        for m, gated, integer_zeros in [(3, False, False), (13, row_blocks % 2 == 0, True)]:
            x = with_outliers(m, k, device, torch.float16)
            out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, bias, gated=gated, path="mma",
                                                   integer_zeros=integer_zeros)
            ref = (_gated_reference(x, packed, scales, zeros, group, bias) if gated
                   else gemm_w4a16_reference(x.float(), packed, scales, zeros, group, bias))
            assert rel_err(out, ref) < 2e-3, (m, gated)


def test_w4a16_mma_integer_zeros_are_subtracted_not_rounded_away(device):
    # integer_zeros=True is the caller's promise: the kernel subtracts OFFSET + zero in 16 bits, where
    # OFFSET + 7.5 rounds to an integer (fp16's 1024 + 7.5 to 1032), while the all-ones MMA path
    # stays exact for any zero. This pins which path each flag takes.
    n, k, group = 48, 256, 128
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device), group, False)
    zeros = zeros + 0.5
    x = with_outliers(4, k, device, torch.float16)
    ref = gemm_w4a16_reference(x.float(), packed, scales, zeros, group)
    exact = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, path="mma")
    promised = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, path="mma", integer_zeros=True)
    assert rel_err(exact, ref) < 2e-3
    assert rel_err(promised, ref) > 2e-2


def test_w4a16_mma_refuses_what_it_does_not_serve():
    packed, scales, zeros = quantize_w4_reference(torch.randn(16, 256), 64, False)
    for x, group, match in [(torch.randn(1, 256), 128, "float32"), (torch.randn(17, 256).half(), 128, "M=17"),
                            (torch.randn(2, 256).half(), 64, "group_size=64")]:
        s, z = (scales, zeros) if group == 64 else quantize_w4_reference(torch.randn(16, 256), 128, False)[1:]
        with pytest.raises(ValueError, match=match):
            gemm_w4a16_mod.gemm_w4a16_triton(x, packed, s, z, group, path="mma")


def test_w4a16_dispatch_by_tokens_shape_and_dtype(monkeypatch):
    path = gemm_w4a16_mod.w4a16_path
    bf16 = torch.bfloat16
    assert path(1, 128, 8192, 8192, bf16) == "gemv"
    assert [path(m, 128, 4096, 14336, bf16) for m in (2, 8, 9, 16, 17)] == ["mma", "mma", "mma", "mma", "tc"]
    assert [path(m, 128, 8192, 8192, torch.float16) for m in (2, 16, 17)] == ["mma", "mma", "tc"]
    # fp32 activations, groups the mma kernel's chunks do not tile, and its switch: the tl.dot kernel.
    assert path(4, 128, 8192, 8192, torch.float32) == "tc"
    assert path(4, 64, 8192, 8192, bf16) == "tc"
    monkeypatch.setenv("PRECISIONOPS_W4A16_MMA", "0")
    assert path(4, 128, 8192, 8192, bf16) == "tc"
    assert path(300, 128, 8192, 8192, bf16) == "dequant" and path(2, 48, 8192, 8192, bf16) == "dequant"


def test_w4a16_mma_config_rule():
    pick = gemm_w4a16_mod.w4a16_mma.pick_config

    def shape(rows, tiles, gated=False, sms=132):
        kw = pick(rows, tiles, gated, sms).kwargs
        return kw["ROW_BLOCKS"], kw["WARPS"], kw["STEP_CHUNKS"]
    # The sweeps' best configs on the H100 (132 SMs), by the rule's bounds on programs of 32 rows.
    assert [shape(rows, 1) for rows in (1024, 2048, 4096, 8192, 10240, 14336, 28672)] == [
        (1, 8, 2), (1, 8, 1), (2, 8, 2), (2, 8, 1), (2, 4, 2), (2, 4, 1), (2, 4, 1)]
    assert [shape(rows, 2) for rows in (1024, 2048, 4096, 6144, 8192, 10240, 14336, 28672)] == [
        (1, 8, 1), (2, 8, 1), (2, 8, 1), (4, 8, 1), (4, 8, 1), (2, 4, 1), (4, 4, 1), (4, 4, 1)]
    # The bounds themselves: 132, 264 and 396 programs of 32 rows.
    assert [shape(rows, 2) for rows in (4224, 4256, 8448, 8480, 12672, 12704)] == [
        (2, 8, 1), (4, 8, 1), (4, 8, 1), (2, 4, 1), (2, 4, 1), (4, 4, 1)]
    # The bounds scale with the GPU's SMs: 8192 rows are 256 programs, over 3 x 80 and under 264.
    assert shape(8192, 2, sms=80) == (4, 4, 1) and shape(8192, 2, sms=264) == (2, 8, 1)
    # Every config the rule gives is one the autotuner holds (the sm_90 compile check builds those).
    configs = gemm_w4a16_mod.w4a16_mma._CONFIGS
    assert all(any(pick(rows, t, g) is c for c in configs) for rows in (512, 4096, 50000) for t in (1, 2)
               for g in (False, True))
    # A gated launch pairs gate and up blocks: never an odd ROW_BLOCKS, whatever the shape.
    for rows, tiles in [(2048, 1), (2048, 2), (28672, 1), (2 * 37, 1), (2 * 37, 2)]:
        assert pick(rows, tiles, gated=True).kwargs["ROW_BLOCKS"] % 2 == 0


def test_w4a16_path_errors():
    x = torch.randn(9, 64)
    packed, scales, zeros = quantize_w4_reference(torch.randn(8, 64), 32, True)
    with pytest.raises(ValueError, match="path must be one of"):
        gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, 32, path="fast")
    with pytest.raises(ValueError, match="serves one token"):
        gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, 32, path="gemv")
    packed, scales, zeros = quantize_w4_reference(torch.randn(8, 48), 24, True)
    with pytest.raises(ValueError, match="power-of-two group_size"):
        gemm_w4a16_mod.gemm_w4a16_triton(torch.randn(1, 48), packed, scales, zeros, 24, path="gemv")


@pytest.mark.parametrize("group", [128, 16])
def test_w4_dequantize_kernel(device, group):
    w = torch.randn(24, 256, device=device)
    packed, scales, zeros = quantize_w4_reference(w, group, False)
    got = dequantize_w4_triton(packed, scales, zeros, group, torch.float32)
    assert torch.equal(got, dequantize_w4_reference(packed, scales, zeros, group))


def _gated_reference(x, packed, scales, zeros, group, bias):
    """silu(gate) * up from the two halves' own fp32 products: checks which rows each output pairs."""
    half = packed.shape[0] // 2
    gate, up = (gemm_w4a16_reference(x.float(), packed[rows], scales[rows], zeros[rows], group, bias[rows])
                for rows in (slice(0, half), slice(half, None)))
    return torch.nn.functional.silu(gate) * up


@pytest.mark.parametrize("m, path", [(1, "gemv"), (1, "tc"), (20, "tc"), (3, "dequant")])
def test_w4a16_gated_every_path_matches_reference(device, m, path):
    # 37 outputs: no whole number of the GEMV's two row sets; 7 groups: ragged last steps. Weights
    # of a trained layer's size, so that gate * up of the 100x outliers stays within fp16.
    n, k, group = 2 * 37, 224, 32
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, k, device=device) * 0.05, group, False)
    bias = torch.randn(n, device=device)
    for dtype in x_dtypes(device):
        x = with_outliers(m, k, device, dtype)
        out = gemm_w4a16_mod.gemm_w4a16_triton(x, packed, scales, zeros, group, bias, gated=True, path=path)
        ref = _gated_reference(x, packed, scales, zeros, group, bias)
        assert out.dtype == dtype and out.shape == (m, n // 2)
        bound = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]
        assert rel_err(out, ref) < bound, dtype
        assert rel_err(gemm_w4a16_reference(x, packed, scales, zeros, group, bias, gated=True), ref) < bound


def test_w4a16_gated_needs_stacked_rows():
    packed, scales, zeros = quantize_w4_reference(torch.randn(5, 64), 32, False)
    for fn in (gemm_w4a16_reference, gemm_w4a16_mod.gemm_w4a16_triton):
        with pytest.raises(ValueError, match="even N"):
            fn(torch.randn(1, 64), packed, scales, zeros, 32, gated=True)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
def test_w4a16_gated_large_gpu(m):
    n = 2 * 1000
    packed, scales, zeros = quantize_w4_reference(torch.randn(n, 4096, device="cuda").bfloat16(), 128, True)
    bias = torch.randn(n, device="cuda")
    x = with_outliers(m, 4096, "cuda", torch.bfloat16)
    out = gemm_w4a16(x, packed, scales, zeros, 128, bias, gated=True)
    assert rel_err(out, _gated_reference(x, packed, scales, zeros, 128, bias)) < 1.5e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 16, 64, 128, 1024])
def test_w4a16_gemm_large_gpu(m):
    # Covers the GEMV, the tensor-core kernel (split-K and not) and the dequant + cuBLAS path.
    w = torch.randn(4096, 4096, device="cuda")
    packed, scales, zeros = quantize_w4_reference(w.bfloat16(), 128, True)
    x = with_outliers(m, 4096, "cuda", torch.bfloat16)
    out = gemm_w4a16(x, packed, scales, zeros, 128)
    ref = gemm_w4a16_reference(x.float(), packed, scales, zeros, 128)
    assert rel_err(out, ref) < 1.5e-2


# --- programmatic dependent launch -------------------------------------------------------


def test_pdl_is_off_where_it_cannot_run(monkeypatch):
    assert _launch.pdl_args(torch.device("cpu")) == {"PDL": False}
    if torch.cuda.is_available():
        monkeypatch.setenv("PRECISIONOPS_PDL", "0")
        assert _launch.pdl_args(torch.device("cuda")) == {"PDL": False}


def _pdl_chain(x, w1, cache, seq_lens, w2q, w2s, w3):
    """x -> W4A16 GEMV -> decode attention (split, then reduced) -> fp8 act quant -> W8A8 fp8 ->
    W4A16 GEMV: each kernel reads what the kernel before it wrote."""
    q = gemm_w4a16(x, *w1, 128).view(1, 32, 128)
    o = decode_attention(q, cache, cache, seq_lens).view(1, 4096)
    oq, os_, _, _ = act_quant(o, "fp8_e4m3")
    return gemm_w4a16(gemm_fp8(oq, os_, w2q, w2s), *w3, 128)


@pytest.mark.gpu
def test_pdl_chain_replayed_from_a_cuda_graph():
    # Under PDL each kernel lets the next one launch right after its own wait, so the next one
    # runs beside it and must wait before it reads. A graph replayed on fresh inputs would show
    # the previous replay's intermediates (plausible values, not NaN) if any read came early.
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90")
    assert _launch.pdl_args(torch.device("cuda"))["PDL"]
    k = 4096
    w1 = quantize_w4_reference((torch.randn(k, k, device="cuda") * k**-0.5).bfloat16(), 128, True)
    w3 = quantize_w4_reference((torch.randn(k, k, device="cuda") * k**-0.5).bfloat16(), 128, True)
    w2q, w2s, _, _ = act_quant(torch.randn(k, k, device="cuda").bfloat16() * k**-0.5, "fp8_e4m3")
    cache = torch.randn(1, 8, 2048, 128, device="cuda").bfloat16()
    seq_lens = torch.tensor([2000], dtype=torch.int32, device="cuda")
    x = torch.empty(1, k, device="cuda", dtype=torch.bfloat16)
    x.copy_(torch.randn(1, k, device="cuda"))
    _pdl_chain(x, w1, cache, seq_lens, w2q, w2s, w3)  # compiles and tunes outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _pdl_chain(x, w1, cache, seq_lens, w2q, w2s, w3)
    for _ in range(3):
        x.copy_(torch.randn(1, k, device="cuda"))
        graph.replay()
        q = gemm_w4a16_reference(x.float(), *w1, 128).view(1, 32, 128)
        o = decode_attention_reference(q, cache, cache, seq_lens).view(1, k)
        oq, os_, _, _ = act_quant_reference(o, "fp8_e4m3")
        ref = gemm_w4a16_reference(gemm_fp8_reference(oq, os_, w2q, w2s, out_dtype=torch.float32), *w3, 128)
        assert rel_err(out, ref) < 3e-2
