"""The pure-torch references against float64 math on fresh random inputs."""
import pytest
import torch

from kernels.act_quant import act_quant, act_quant_reference
from kernels.gemm_fp8 import gemm_fp8_reference
from kernels.gemm_int8 import gemm_int8, gemm_int8_reference
from kernels.gemm_w4a16 import dequantize_w4_reference, gemm_w4a16, gemm_w4a16_reference, quantize_w4_reference
from kernels.packing import pack_int4, unpack_int4

SHAPES = [(1, 64), (7, 130), (33, 96)]
E4M3_REL_STEP = 2.0**-3  # e4m3 has 3 mantissa bits: one step is at most 1/8 of the value


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error; NaN anywhere makes it NaN, which fails every bound."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def with_outliers(m: int, k: int, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(m, k)
    x.view(-1)[torch.randint(0, m * k, (max(1, m * k // 50),))] *= 100.0
    return x.to(dtype)


def test_pack_roundtrip_and_layout():
    q = torch.randint(0, 16, (5, 34), dtype=torch.uint8)
    p = pack_int4(q)
    assert p.shape == (5, 17)
    assert torch.equal(p[:, 0] & 0xF, q[:, 0]) and torch.equal(p[:, 0] >> 4, q[:, 1])
    assert torch.equal(unpack_int4(p, 34), q)


def test_pack_rejects_odd_k_and_wide_codes():
    with pytest.raises(ValueError, match="K=7"):
        pack_int4(torch.zeros(2, 7, dtype=torch.uint8))
    with pytest.raises(ValueError, match="K=5"):
        unpack_int4(torch.zeros(2, 3, dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="0..15"):
        pack_int4(torch.full((2, 4), 16, dtype=torch.uint8))


@pytest.mark.parametrize("m, k", SHAPES)
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_act_quant_dynamic(m, k, fmt):
    x = with_outliers(m, k)
    q, scale, amax, n_sat = act_quant_reference(x, fmt)
    fmax = 448.0 if fmt == "fp8_e4m3" else 127.0
    assert q.dtype == (torch.float8_e4m3fn if fmt == "fp8_e4m3" else torch.int8)
    assert scale.shape == (m, 1) and amax.shape == (m, 1)
    assert torch.equal(amax, x.abs().amax(dim=1, keepdim=True))
    torch.testing.assert_close(scale, amax / fmax)
    assert n_sat.dtype == torch.int64 and n_sat.dim() == 0 and int(n_sat) == 0
    deq = q.float() * scale
    # Each element is off by at most half a step: relative 1/16 for e4m3, scale/2 for int8.
    bound = 2.0**-4 if fmt == "fp8_e4m3" else 0.5 / 127 * 100
    assert rel_err(deq, x) < bound
    assert (q.float().abs() <= fmax).all()


def test_act_quant_static_counts_saturation_and_rounds_half_even():
    x = torch.tensor([[0.5, 1.5, 2.5, -2.5, 200.0, -300.0]])
    q, scale, amax, n_sat = act_quant_reference(x, "int8", torch.tensor(1.0))
    assert q.tolist() == [[0, 2, 2, -2, 127, -127]]
    assert scale.shape == (1, 1) and float(amax) == 300.0 and int(n_sat) == 2
    x = with_outliers(16, 64)
    q, scale, _, n_sat = act_quant_reference(x, "fp8_e4m3", torch.tensor([[0.01]]))
    assert int(n_sat) == int((x.abs() > 0.01 * 448).sum()) > 0
    assert q.float().abs().max() == 448.0 and not q.float().isnan().any()


def test_act_quant_zero_token_and_bad_input():
    q, scale, amax, _ = act_quant(torch.zeros(2, 8), "fp8_e4m3")
    assert (scale > 0).all() and (q.float() == 0).all() and (amax == 0).all()
    with pytest.raises(ValueError, match="fmt"):
        act_quant(torch.ones(2, 8), "fp4")
    with pytest.raises(ValueError, match="scale"):
        act_quant(torch.ones(2, 8), "int8", torch.ones(2))
    with pytest.raises(ValueError, match="backend"):
        act_quant(torch.ones(2, 8), "int8", backend="cuda")


@pytest.mark.parametrize("m, n, k", [(1, 33, 64), (7, 96, 130)])
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_reference_matches_float64(m, n, k, fmt):
    x, w = with_outliers(m, k), torch.randn(n, k)
    xq, xs, _, _ = act_quant_reference(x, fmt)
    wq, ws, _, _ = act_quant_reference(w, fmt)
    bias = torch.randn(n)
    gemm = gemm_fp8_reference if fmt == "fp8_e4m3" else gemm_int8_reference
    out = gemm(xq, xs, wq, ws, bias, torch.float32)
    exact = (xq.double() * xs.double()) @ (wq.double() * ws.double()).t() + bias.double()
    assert out.dtype == torch.float32 and rel_err(out, exact) < 1e-5
    # Against the unquantized product the error is the quantization error only.
    bound = 0.1 if fmt == "fp8_e4m3" else 0.05
    assert rel_err(out, x.double() @ w.double().t() + bias.double()) < bound


def test_w8a8_reference_rejects_bad_shapes():
    xq = torch.zeros(4, 8, dtype=torch.int8)
    wq = torch.zeros(3, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="xs"):
        gemm_int8(xq, torch.ones(3, 1), wq, torch.ones(3, 1))
    with pytest.raises(ValueError, match="ws"):
        gemm_int8(xq, torch.ones(4, 1), wq, torch.ones(1, 3))
    with pytest.raises(ValueError, match="xq"):
        gemm_int8(xq.float(), torch.ones(4, 1), wq, torch.ones(3, 1))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_w4_roundtrip(symmetric, dtype):
    w = torch.randn(48, 256).to(dtype)
    packed, scales, zeros = quantize_w4_reference(w, 128, symmetric)
    assert packed.shape == (48, 128) and scales.shape == zeros.shape == (48, 2)
    assert scales.dtype == zeros.dtype == dtype
    if symmetric:
        assert (zeros == 8).all()
    deq = dequantize_w4_reference(packed, scales, zeros, 128)
    # 16 levels over a Gaussian group's range: ~10% relative error, 7.5% for min-max.
    assert rel_err(deq, w.float()) < (0.13 if symmetric else 0.11)


def test_gemm_w4a16_reference():
    w, x = torch.randn(40, 256), torch.randn(3, 256).half()
    packed, scales, zeros = quantize_w4_reference(w, 128, False)
    out = gemm_w4a16_reference(x, packed, scales, zeros, 128, torch.ones(40))
    exact = x.double() @ dequantize_w4_reference(packed, scales, zeros, 128).double().t() + 1.0
    assert out.dtype == torch.float16 and rel_err(out, exact) < 1e-3
    with pytest.raises(ValueError, match="group_size"):
        gemm_w4a16(x, packed, scales, zeros, 96)
    with pytest.raises(ValueError, match="zeros"):
        gemm_w4a16(x, packed, scales, zeros.half(), 128)
