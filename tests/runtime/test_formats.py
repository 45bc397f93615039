"""Round-trip error of every format against its known bound, and saturation/underflow accounting."""
import math

import pytest
import torch

from runtime.errors import InputError
from runtime.formats import PerChannel, PerGroup, PerTensor, PerToken, get_format, quantize

# Relative round-trip error bounds on N(0, 1) data: half an ulp of the mantissa for floats
# (e4m3: 3 bits -> 2^-4, e5m2: 2 bits -> 2^-3) and half a step over amax for ints.
CASES = [
    ("bf16", PerTensor(), True, 2.0**-8),
    ("fp16", PerTensor(), True, 2.0**-11),
    ("fp8_e4m3", PerTensor(), True, 2.0**-4),
    ("fp8_e4m3", PerChannel(0), True, 2.0**-4),
    ("fp8_e4m3", PerToken(), True, 2.0**-4),
    ("fp8_e5m2", PerTensor(), True, 2.0**-3),
    ("fp8_e5m2", PerChannel(0), True, 2.0**-3),
    ("int8", PerChannel(0), True, None),
    ("int8", PerToken(), True, None),
    ("int4", PerGroup(32), True, None),
    ("int4", PerGroup(64), False, None),
    ("int4", PerGroup(128), True, None),
    ("int4", PerGroup(128), False, None),
]
SHAPES = [(1, 128), (7, 256), (33, 384)]


@pytest.mark.parametrize("fmt, gran, sym, rel_bound", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_error_within_format_bound(fmt, gran, sym, rel_bound, shape):
    x = torch.randn(shape, dtype=torch.float64).float()
    q = quantize(x, fmt, gran, symmetric=sym)
    d = q.dequantize()
    assert torch.isfinite(d).all()
    err = (d - x).abs()
    if rel_bound is not None:
        # Floats: element-wise relative error bound for normal values (subnormals excluded).
        scale = q.scale if q.scale is not None else torch.ones(1)
        normal = (x.abs() / scale.reshape(-1, 1) if q.scale is not None and scale.numel() > 1 and scale.shape[0] == shape[0]
                  else x.abs() / scale.reshape(-1)[0]) > 2.0**-6
        assert (err[normal] <= rel_bound * x.abs()[normal] + 1e-12).all()
    else:
        # Ints: absolute error at most half a quantization step of the element's scale.
        step = q.scale.expand(*q.data.shape).reshape(shape) if q.scale is not None else None
        assert (err <= 0.5 * step + 1e-6).all()
    assert q.stats.overflows_pct == 0.0  # dynamic scales cover their own amax


def test_static_scale_counts_saturation_exactly():
    x = torch.randn(64, 128)
    scale = torch.tensor(x.abs().max().item() / 2 / 448.0)  # half the range: everything above amax/2 clips
    q = quantize(x, "fp8_e4m3", PerTensor(), scale=scale)
    expected = (x.abs() > scale * 448.0).float().mean().item() * 100
    assert q.stats.overflows_pct == pytest.approx(expected, rel=1e-6)
    assert q.stats.overflows_pct > 0
    assert q.dequantize().abs().max() <= scale * 448.0 * (1 + 1e-6)


def test_underflow_counts_values_flushed_to_zero():
    x = torch.randn(16, 128)
    x[0, :64] = 1e-9  # far below the smallest e4m3 subnormal after scaling
    q = quantize(x, "fp8_e4m3", PerTensor())
    flushed = ((x != 0) & (q.dequantize() == 0)).sum().item()
    assert flushed >= 64
    assert q.stats.underflows_pct == pytest.approx(100 * flushed / x.numel(), rel=1e-6)


def test_stats_report_scale_range_and_mse():
    x = torch.randn(8, 256) * torch.logspace(-2, 2, 8).unsqueeze(1)
    q = quantize(x, "int8", PerChannel(0))
    assert q.stats.scale_min < q.stats.scale_max
    assert q.stats.scale_max == pytest.approx(x.abs().amax(1).max().item() / 127, rel=1e-5)
    assert q.stats.mse == pytest.approx((q.dequantize() - x).pow(2).mean().item(), rel=1e-5)
    assert q.stats.amax == pytest.approx(x.abs().max().item())


def test_outliers_per_channel_protect_other_channels_in_int8():
    # int8 steps are uniform: one outlier row stretches a per-tensor scale for every row.
    x = torch.randn(32, 256)
    x[3] *= 100.0
    per_tensor = (quantize(x, "int8", PerTensor()).dequantize() - x)[:3].norm()
    per_channel = (quantize(x, "int8", PerChannel(0)).dequantize() - x)[:3].norm()
    assert per_channel < per_tensor / 10


def test_int4_symmetric_uses_zero_point_8_and_codes_fit_a_nibble():
    q = quantize(torch.randn(4, 128), "int4", PerGroup(32))
    assert q.data.max() <= 15 and q.zero.unique().tolist() == [8.0]


def test_group_size_must_divide_input_dim():
    with pytest.raises(InputError, match="does not divide the input dimension 100"):
        quantize(torch.randn(4, 100), "int4", PerGroup(32))


def test_unknown_format_names_the_field():
    with pytest.raises(InputError, match="unknown format 'fp6'") as exc:
        get_format("fp6")
    assert exc.value.errors[0]["loc"] == ("format",)


def test_format_constants():
    assert get_format("fp8_e4m3").fmax == 448.0 and get_format("fp8_e5m2").fmax == 57344.0
    assert math.isclose(get_format("fp8_e4m3").fmin, 2.0**-9)
