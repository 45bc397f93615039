import math

import pytest
import torch

from runtime.errors import InputError
from runtime.evaluation import (
    Gate,
    apply_gates,
    kl_divergence,
    perplexity,
    sqnr_db,
    token_nll,
    top1_agreement,
)
from runtime.evaluation.metrics import Metrics


def test_kl_by_hand():
    # p_ref = [1/2, 1/2]; p_cand = [3/4, 1/4]: KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    ref = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    cand = torch.tensor([[math.log(3.0), 0.0], [11.0, 12.0]])  # second token: same distribution, shifted
    kl = kl_divergence(ref, cand)
    assert kl.dtype == torch.float32 and kl.shape == (2,)
    assert float(kl[0]) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert float(kl[1]) == pytest.approx(0.0, abs=1e-7)


def test_kl_is_not_symmetric():
    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 0.0, 0.0]])
    assert float(kl_divergence(a, b)) != pytest.approx(float(kl_divergence(b, a)), rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kl_matches_fp64_on_random_logits(dtype):
    ref = (torch.randn(3, 11, 503) * 4).to(dtype)
    cand = (ref.float() + torch.randn(3, 11, 503) * 0.3).to(dtype)
    p = torch.softmax(ref.double(), -1)
    expected = (p * (torch.log_softmax(ref.double(), -1) - torch.log_softmax(cand.double(), -1))).sum(-1)
    got = kl_divergence(ref, cand).double()
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-4
    assert (got >= 0).all()


def test_top1_agreement_by_hand():
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
    cand = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 0.0]])
    assert top1_agreement(ref, cand) == 0.5
    assert top1_agreement(ref, ref) == 1.0


def test_perplexity_by_hand():
    uniform = torch.zeros(1, 4, 2)
    assert perplexity(uniform, torch.tensor([[0, 1, 1, 0]])) == pytest.approx(2.0)
    # p(label) = 3/4 then 1/4: ppl = exp((ln 4/3 + ln 4) / 2) = sqrt(16/3).
    logits = torch.tensor([[[math.log(3.0), 0.0], [math.log(3.0), 0.0]]])
    assert perplexity(logits, torch.tensor([[0, 1]])) == pytest.approx(math.sqrt(16 / 3), rel=1e-6)
    # An ignored label drops out: only p = 3/4 is scored.
    assert perplexity(logits, torch.tensor([[0, -100]])) == pytest.approx(4 / 3, rel=1e-6)
    nll = token_nll(logits, torch.tensor([[0, -100]]))
    assert nll[0].tolist() == pytest.approx([math.log(4 / 3), 0.0])


def test_perplexity_errors():
    with pytest.raises(InputError, match="every label is ignore_index"):
        perplexity(torch.zeros(1, 2, 3), torch.full((1, 2), -100))
    with pytest.raises(InputError, match="labels shape"):
        perplexity(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))


def test_sqnr_by_hand():
    # ||ref||^2 = 25, ||ref - cand||^2 = 1: 10 log10 25 = 13.979 dB.
    assert sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0])) == pytest.approx(10 * math.log10(25))
    assert sqnr_db(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == math.inf
    assert sqnr_db(torch.zeros(2), torch.ones(2)) == -math.inf
    with pytest.raises(InputError, match="shapes differ"):
        sqnr_db(torch.zeros(2), torch.zeros(3))


def test_sqnr_of_fp8_rounding_on_random_data():
    # e4m3 has 3 mantissa bits: relative rounding error ~2^-4 / sqrt(3), about 30 dB.
    x = torch.randn(4096) * 10
    y = x.to(torch.float8_e4m3fn).float()
    assert 25 < sqnr_db(x, y) < 35


def _report(**groups):
    from runtime.evaluation import EvaluationReport

    def m(kl, top1):
        return Metrics(samples=2, tokens=10, kl_mean=kl, kl_p95=kl, kl_max=kl, top1_agreement=top1,
                       ppl_reference=10.0, ppl_candidate=11.0, ppl_delta=1.0, ppl_delta_pct=10.0)
    return EvaluationReport(
        corpus_name="c", corpus_hash="sha256:0", samples=4, seq_len=16, metrics=m(0.02, 0.95),
        by_slice={name: m(*v) for name, v in groups.items()}, by_bucket={"0-128": m(0.02, 0.95)},
        layers={"a": 40.0, "b": 25.0})


def test_gates_pass_and_fail_with_messages():
    report = _report(english=(0.01, 0.97), code=(0.3, 0.7))
    gated = report.with_gates([
        Gate(metric="kl_mean", max=0.05),
        Gate(metric="kl_mean", max=0.05, slice="code"),
        Gate(metric="top1_agreement", min=0.9, slice="english"),
        {"metric": "top1_agreement", "min": 0.9, "slice": "code"},
        Gate(metric="sqnr_min_db", min=20.0),
        Gate(metric="ppl_delta_pct", max=5.0, bucket="0-128"),
    ])
    passed = [r.passed for r in gated.gate_results]
    assert passed == [True, False, True, False, True, False]
    assert not gated.passed
    messages = [r.message for r in gated.failures()]
    assert messages == [
        "kl_mean = 0.3 on slice 'code' exceeds max 0.05",
        "top1_agreement = 0.7 on slice 'code' is below min 0.9",
        "ppl_delta_pct = 10 on length bucket '0-128' exceeds max 5",
    ]
    failing = gated.failures()[0]
    assert (failing.metric, failing.slice, failing.value, failing.threshold) == ("kl_mean", "code", 0.3, 0.05)
    assert report.with_gates([Gate(metric="kl_max", max=1.0)]).passed


def test_gate_on_a_missing_slice_or_metric_fails():
    report = _report(english=(0.01, 0.97))
    [missing] = apply_gates(report, [Gate(metric="kl_mean", max=1.0, slice="legal")])
    assert not missing.passed and missing.value is None
    assert missing.message == "kl_mean: slice 'legal' has no samples in this evaluation, so the gate cannot pass"
    nan_report = report.model_copy(update={"metrics": report.metrics.model_copy(update={"kl_mean": None})})
    [unmeasured] = apply_gates(nan_report, [Gate(metric="kl_mean", max=1.0)])
    assert not unmeasured.passed and "could not be measured" in unmeasured.message


@pytest.mark.parametrize("gate, message", [
    ({"metric": "kl_avg", "max": 1}, "unknown metric 'kl_avg'"),
    ({"metric": "kl_mean"}, "exactly one of `max` or `min`"),
    ({"metric": "kl_mean", "max": 1, "min": 0}, "exactly one of `max` or `min`"),
    ({"metric": "kl_mean", "max": 1, "slice": "a", "bucket": "0-128"}, "not both"),
    ({"metric": "sqnr_min_db", "min": 20, "slice": "code"}, "whole run"),
    ({"metric": "kl_mean", "max": float("nan")}, "finite"),
    ({"metric": "kl_mean", "max": 1, "slcie": "code"}, "Extra inputs"),
])
def test_bad_gates_name_the_field(gate, message):
    with pytest.raises(InputError, match=message) as info:
        apply_gates(_report(), [{"metric": "kl_mean", "max": 1.0}, gate])
    assert info.value.errors[0]["loc"][:2] == ("gates", 1)
