import math

import pytest
import torch

from runtime.calibration import (
    AMAX_FLOOR,
    AmaxHistoryObserver,
    CalibrationError,
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    get_observer,
)
from runtime.calibration.observers import ROUND_TRIPS
from runtime.calibration.sampling import RowSampler, percentile
from runtime.calibration.statistics import HIST_MIN_EXP, StatsAccumulator
from runtime.errors import InputError
from runtime.formats import PerTensor, fake_quantize

# Odd sizes on purpose: nothing lines up with a power of two.
SHAPES = [(7, 33), (3, 5, 17)]


def _batches(shape, n=4):
    return [torch.randn(shape) * (i + 1) for i in range(n)]


@pytest.mark.parametrize("shape", SHAPES)
def test_minmax_per_tensor_and_per_channel(shape):
    xs = _batches(shape)
    t = MinMaxObserver()
    c = MinMaxObserver(per_channel=True)
    for x in xs:
        t.update(x)
        c.update(x)
    stacked = torch.cat([x.reshape(-1, shape[-1]) for x in xs]).double()
    assert t.amax().shape == ()
    assert float(t.amax()) == pytest.approx(float(stacked.abs().max()), rel=1e-6)
    assert c.amax().shape == (shape[-1],)
    torch.testing.assert_close(c.amax().double(), stacked.abs().amax(dim=0), rtol=1e-6, atol=0)
    assert t.steps == 4


@pytest.mark.parametrize("q", [50.0, 99.0, 99.9, 99.99])
def test_percentile_is_exact_below_capacity(q):
    xs = _batches((64, 40))
    obs = PercentileObserver(q=q)
    for x in xs:
        obs.update(x)
    reference = torch.quantile(torch.cat(xs).abs().reshape(-1).double(), q / 100)
    assert float(obs.amax()) == pytest.approx(float(reference), rel=1e-6)


def test_percentile_per_channel_is_exact_below_capacity():
    xs = _batches((50, 9))
    obs = PercentileObserver(q=90.0, per_channel=True)
    for x in xs:
        obs.update(x)
    reference = torch.quantile(torch.cat(xs).abs().double(), 0.9, dim=0)
    torch.testing.assert_close(obs.amax().double(), reference, rtol=1e-6, atol=0)


def test_percentile_from_a_sample_estimates_the_stream():
    # 4M values through a 64k sample: the 99.9th percentile of |N(0, 1)| is 3.29.
    obs = PercentileObserver(q=99.9, capacity=2**16)
    full = []
    for _ in range(16):
        x = torch.randn(2**18)
        full.append(x)
        obs.update(x)
    exact = float(torch.cat(full).abs().kthvalue(int(0.999 * 2**22)).values)
    assert obs._sampler.rate < 1.0
    assert abs(float(obs.amax()) - exact) / exact < 0.02


def test_row_sampler_stays_bounded_and_uniform():
    sampler = RowSampler(1000, seed=3)
    for start in range(0, 100_000, 5000):
        sampler.add(torch.arange(start, start + 5000, dtype=torch.float32).unsqueeze(1))
    rows = sampler.rows()
    assert rows.shape[0] <= 1000 and rows.shape[1] == 1
    assert sampler.seen == 100_000
    # A uniform sample of 0..99999 has mean 50000 and its quartiles near 25000 / 75000.
    assert abs(float(rows.mean()) - 50_000) < 3_000
    assert abs(float(percentile(rows.sort(dim=0).values, 25.0)) - 25_000) < 4_000


def test_percentile_helper_matches_numpy_linear_method():
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    assert float(percentile(values, 0.0)) == 1.0
    assert float(percentile(values, 100.0)) == 16.0
    assert float(percentile(values, 50.0)) == 4.0
    assert float(percentile(values, 87.5)) == pytest.approx(12.0)  # pos 3.5: halfway 8 -> 16


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "int8", "int4"])
def test_round_trips_match_runtime_formats(fmt):
    x = torch.randn(37, 19) * 3
    fmax, round_trip = ROUND_TRIPS[fmt]
    scale = x.abs().max() / fmax
    expected = fake_quantize(x, fmt, PerTensor(), scale=scale)
    torch.testing.assert_close(round_trip(x, scale), expected, rtol=1e-6, atol=1e-7)


def _mse(x, amax, fmt):
    fmax, round_trip = ROUND_TRIPS[fmt]
    return float((round_trip(x, torch.as_tensor(amax) / fmax) - x).double().pow(2).mean())


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
def test_mse_picks_the_best_clip_on_the_grid(fmt):
    # Gaussian bulk plus a few large outliers: clipping the outliers lowers the error.
    x = torch.randn(4000)
    x[:4] = torch.tensor([40.0, -35.0, 30.0, 25.0])
    obs = MseObserver(fmt=fmt, grid=50, max_shrink=0.9)
    obs.update(x)
    chosen = float(obs.amax())
    amax = float(x.abs().max())
    errors = {r: _mse(x, amax * r, fmt) for r in obs.ratios}
    best_ratio = min(errors, key=errors.get)
    assert chosen == pytest.approx(amax * best_ratio, rel=1e-6)
    assert _mse(x, chosen, fmt) <= _mse(x, amax, fmt)
    if fmt == "int4":  # coarse formats gain most from clipping
        assert chosen < 0.5 * amax


def test_mse_keeps_the_max_for_uniform_data_in_int8():
    x = torch.rand(5000) * 2 - 1
    obs = MseObserver(fmt="int8")
    obs.update(x)
    assert float(obs.amax()) > 0.9 * float(x.abs().max())


def test_mse_per_channel_and_custom_fake_quant():
    x = torch.randn(1000, 6)
    x[0, 2] = 30.0
    calls = []

    def round_trip(v, scale):  # a 4-bit grid: one outlier costs the whole channel its resolution
        calls.append(scale.shape)
        return torch.round(v / scale).clamp(-8, 7) * scale

    obs = MseObserver(per_channel=True, fake_quant=round_trip, fmax=7.0, grid=20, capacity=4096)
    obs.update(x)
    amax = obs.amax()
    assert amax.shape == (6,)
    assert float(amax[2]) < 15.0  # the outlier channel gets clipped
    assert calls and calls[0] == (6,)
    with pytest.raises(InputError, match="fmax"):
        MseObserver(fake_quant=round_trip)


def test_mse_is_stable_until_the_next_update():
    obs = MseObserver(fmt="int8")
    obs.update(torch.randn(100))
    first = obs.amax()
    assert torch.equal(obs.amax(), first)
    obs.update(torch.randn(100) * 10)
    assert float(obs.amax()) > float(first)


def test_amax_history_forgets_old_steps():
    obs = AmaxHistoryObserver(length=4)
    values = [1.0, 9.0, 2.0, 3.0, 4.0, 5.0, 2.5]
    seen = []
    for v in values:
        obs.update(torch.tensor([v, -v / 2]))
        seen.append(float(obs.amax()))
    # The 9 drops out once four newer steps have been seen.
    assert seen == [1.0, 9.0, 9.0, 9.0, 9.0, 5.0, 5.0]
    assert len(obs.history) == 4


def test_amax_history_per_channel():
    obs = AmaxHistoryObserver(length=2, per_channel=True)
    obs.update(torch.tensor([[5.0, 1.0]]))
    obs.update(torch.tensor([[1.0, 2.0]]))
    obs.update(torch.tensor([[1.0, 1.0]]))
    assert obs.amax().tolist() == [1.0, 2.0]


@pytest.mark.parametrize("name", ["minmax", "percentile", "mse", "amax_history"])
def test_scale_is_amax_over_fmax_and_never_zero(name):
    obs = get_observer(name)
    x = torch.randn(64, 16)
    obs.update(x)
    assert float(obs.scale(448.0)) == pytest.approx(float(obs.amax()) / 448.0, rel=1e-6)
    zero = get_observer(name)
    zero.update(torch.zeros(8, 4))
    assert float(zero.amax()) == 0.0
    assert float(zero.scale(448.0)) == pytest.approx(AMAX_FLOOR / 448.0)
    assert float(zero.scale(448.0)) > 0
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(InputError, match="fmax"):
            obs.scale(bad)


def test_registry_and_argument_errors():
    assert isinstance(get_observer("percentile", q=99.0), PercentileObserver)
    assert get_observer("amax_history", history=8.0).length == 8  # recipe spelling and float kwargs
    with pytest.raises(InputError, match="unknown observer 'ema'; known observers: minmax, percentile, mse"):
        get_observer("ema")
    with pytest.raises(InputError, match="bad arguments for observer 'minmax'") as info:
        get_observer("minmax", q=3)
    assert info.value.errors[0]["loc"] == ("observer_kwargs",)
    with pytest.raises(InputError, match="q must be in"):
        get_observer("percentile", q=0)
    with pytest.raises(InputError, match="length must be a positive integer"):
        get_observer("amax_history", length=2.5)
    with pytest.raises(InputError, match="no built-in round trip for format 'mxfp4'"):
        get_observer("mse", fmt="mxfp4")


def test_observer_input_errors():
    obs = MinMaxObserver(per_channel=True)
    with pytest.raises(CalibrationError, match="seen no data"):
        obs.amax()
    with pytest.raises(InputError, match="NaN or infinite"):
        obs.update(torch.tensor([[1.0, float("nan")]]))
    obs.update(torch.ones(3, 5))
    with pytest.raises(InputError, match="expected 5 channels"):
        obs.update(torch.ones(3, 4))
    with pytest.raises(InputError, match="floating-point"):
        obs.update(torch.ones(3, 5, dtype=torch.int64))
    with pytest.raises(InputError, match="empty"):
        obs.update(torch.ones(0, 5))


def test_stats_accumulator_histogram_and_outliers():
    acc = StatsAccumulator(MinMaxObserver())
    x = torch.randn(200, 12).abs() + 0.1
    x[:, 7] *= 40  # one outlier channel
    x[0, 0] = 0.0
    x[1, 0] = 0.75  # bin of [0.5, 1)
    x[2, 0] = 3.0  # bin of [2, 4)
    x[3, 0] = 1e-30  # below the histogram range: first bin
    acc.update(x[:100])
    acc.update(x[100:])
    stats = acc.finalize()
    assert stats.outlier_channels == [7]
    assert stats.tokens == 200 and stats.channels == 12
    assert stats.amax == pytest.approx(float(x.abs().max()))
    assert stats.rms == pytest.approx(float(x.double().pow(2).mean().sqrt()), rel=1e-5)
    h = stats.histogram
    assert h.zeros == 1 and sum(h.counts) == x.numel() - 1
    flat = x.reshape(-1).double()
    for i, count in enumerate(h.counts[1:-1], start=1):  # interior bins by hand
        lo, hi = 2.0 ** (HIST_MIN_EXP + i), 2.0 ** (HIST_MIN_EXP + i + 1)
        assert count == int(((flat >= lo) & (flat < hi)).sum()), (i, lo)
    assert h.counts[0] == int(((flat > 0) & (flat < 2.0 ** (HIST_MIN_EXP + 1))).sum()) == 1
    assert stats.percentile_exact
    assert stats.percentiles["99.9"] == pytest.approx(float(torch.quantile(flat, 0.999)), rel=1e-6)
