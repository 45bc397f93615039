import copy
import json
import math

import pytest
import torch

from runtime.corpora import length_bucket
from runtime.errors import InputError
from runtime.evaluation import SQNR_CEILING_DB, EvaluationReport, Gate, evaluate, kl_divergence, top1_match
from runtime.models import linear_ops


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
def test_model_against_itself(request, model_fixture, tiny_tokenizer, tiny_corpus):
    model = request.getfixturevalue(model_fixture)
    report = evaluate(model, model, tiny_tokenizer, tiny_corpus, seq_len=128, batch_size=3,
                      gates=[Gate(metric="kl_max", max=1e-6), Gate(metric="top1_agreement", min=1.0, slice="code")])
    m = report.metrics
    assert m.kl_mean == pytest.approx(0.0, abs=1e-7) and m.kl_max == pytest.approx(0.0, abs=1e-6)
    assert m.top1_agreement == 1.0
    assert m.ppl_delta == pytest.approx(0.0, abs=1e-9) and m.ppl_reference == m.ppl_candidate > 1.0
    assert m.samples == 8 and m.nonfinite_tokens == 0
    assert set(report.by_slice) == {"english", "russian", "code"}
    assert set(report.by_bucket) <= {"0-128", "128-512"} and "0-128" in report.by_bucket
    assert sum(g.samples for g in report.by_slice.values()) == sum(g.samples for g in report.by_bucket.values()) == 8
    assert set(report.layers) == {op.name for op in linear_ops(model)}
    assert all(v == SQNR_CEILING_DB for v in report.layers.values())
    assert report.unmatched_layers == []
    assert report.passed and all(r.passed for r in report.gate_results)


def test_metrics_match_an_unpadded_per_sample_reference(tiny_llama, tiny_tokenizer, tiny_corpus):
    candidate = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        candidate.lm_head.weight.add_(torch.randn_like(candidate.lm_head.weight) * 0.05)
    report = evaluate(tiny_llama, candidate, tiny_tokenizer, tiny_corpus, seq_len=96, batch_size=3)
    kls, top1s, nll_ref, nll_cand, per_slice = [], [], [], [], {}
    with torch.no_grad():
        for sample in tiny_corpus:
            ids = tiny_tokenizer(sample.text, truncation=True, max_length=96, return_tensors="pt")["input_ids"]
            ref = tiny_llama(input_ids=ids).logits[0].double()
            cand = candidate(input_ids=ids).logits[0].double()
            kl = kl_divergence(ref, cand).double()
            kls.append(kl)
            per_slice.setdefault(sample.slice, []).append(kl)
            top1s.append(top1_match(ref, cand))
            nll_ref.append(torch.nn.functional.cross_entropy(ref[:-1], ids[0, 1:], reduction="none"))
            nll_cand.append(torch.nn.functional.cross_entropy(cand[:-1], ids[0, 1:], reduction="none"))
    kl_all = torch.cat(kls)
    assert report.metrics.tokens == kl_all.numel()
    assert report.metrics.kl_mean == pytest.approx(float(kl_all.mean()), rel=1e-4)
    assert report.metrics.kl_max == pytest.approx(float(kl_all.max()), rel=1e-4)
    assert report.metrics.kl_p95 == pytest.approx(float(torch.quantile(kl_all, 0.95)), rel=1e-4)
    assert report.metrics.top1_agreement == pytest.approx(float(torch.cat(top1s).double().mean()))
    ppl_ref = math.exp(float(torch.cat(nll_ref).mean()))
    ppl_cand = math.exp(float(torch.cat(nll_cand).mean()))
    assert report.metrics.ppl_reference == pytest.approx(ppl_ref, rel=1e-4)
    assert report.metrics.ppl_candidate == pytest.approx(ppl_cand, rel=1e-4)
    assert report.metrics.ppl_delta == pytest.approx(ppl_cand - ppl_ref, rel=1e-3, abs=1e-4)
    for name, group in per_slice.items():
        assert report.by_slice[name].kl_mean == pytest.approx(float(torch.cat(group).mean()), rel=1e-4)
    lengths = [len(tiny_tokenizer(s.text, truncation=True, max_length=96)["input_ids"]) for s in tiny_corpus]
    for label, metrics in report.by_bucket.items():
        assert metrics.samples == sum(1 for n in lengths if length_bucket(n) == label)


def test_perturbed_copy_fails_a_gate_naming_metric_and_slice(tiny_llama, tiny_tokenizer, tiny_corpus):
    candidate = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        w = candidate.model.layers[1].mlp.down_proj.weight
        w.add_(torch.randn_like(w) * w.abs().mean())
    gates = [Gate(metric="kl_mean", max=1e-6, slice="code"), Gate(metric="kl_mean", max=10.0)]
    report = evaluate(tiny_llama, candidate, tiny_tokenizer, tiny_corpus, gates=gates, seq_len=64)
    assert report.metrics.kl_mean > 0
    assert not report.passed
    [failure] = report.failures()
    assert (failure.metric, failure.slice) == ("kl_mean", "code")
    assert failure.message.startswith("kl_mean = ") and "on slice 'code' exceeds max 1e-06" in failure.message
    # Layers before the perturbed one are exact; it and everything after it are not.
    assert report.layers["model.layers.0.mlp.down_proj"] == SQNR_CEILING_DB
    assert report.layers["model.layers.1.self_attn.q_proj"] == SQNR_CEILING_DB
    assert 0 < report.layers["model.layers.1.mlp.down_proj"] < 20
    assert report.layers["lm_head"] < SQNR_CEILING_DB
    assert report.sqnr_min_db == min(report.layers.values())


def test_report_is_plain_json(tiny_gpt2, tiny_tokenizer, tiny_corpus):
    report = evaluate(tiny_gpt2, tiny_gpt2, tiny_tokenizer, tiny_corpus, max_samples=3, seq_len=16,
                      gates=[Gate(metric="sqnr_min_db", min=30.0)])
    document = json.loads(report.model_dump_json(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert document["passed"] is True
    assert EvaluationReport.model_validate_json(report.model_dump_json()) == report


def test_nan_candidate_is_reported_and_fails(tiny_gpt2, tiny_tokenizer, tiny_corpus):
    candidate = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        candidate.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    report = evaluate(tiny_gpt2, candidate, tiny_tokenizer, tiny_corpus, max_samples=3, seq_len=16,
                      gates=[Gate(metric="kl_mean", max=1.0)])
    assert report.metrics.nonfinite_tokens == report.metrics.tokens
    assert report.metrics.kl_mean is None
    assert report.layers["lm_head"] == -SQNR_CEILING_DB
    assert not report.passed and "could not be measured" in report.gate_results[0].message
    json.loads(report.model_dump_json(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def test_sample_cap_keeps_every_slice(tiny_gpt2, tiny_tokenizer, tiny_corpus):
    report = evaluate(tiny_gpt2, tiny_gpt2, tiny_tokenizer, tiny_corpus, max_samples=3, seq_len=16)
    assert {name: m.samples for name, m in report.by_slice.items()} == {"english": 1, "russian": 1, "code": 1}


def test_progress(tiny_llama, tiny_tokenizer, tiny_corpus):
    calls = []
    evaluate(tiny_llama, tiny_llama, tiny_tokenizer, tiny_corpus, max_samples=5, seq_len=16, batch_size=2,
             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_layers_missing_from_the_candidate_are_listed(tiny_llama, tiny_tokenizer, tiny_corpus):
    shallower = copy.deepcopy(tiny_llama)
    shallower.model.layers = shallower.model.layers[:1]
    shallower.config.num_hidden_layers = 1
    report = evaluate(tiny_llama, shallower, tiny_tokenizer, tiny_corpus, max_samples=2, seq_len=16)
    assert report.unmatched_layers == [op.name for op in linear_ops(tiny_llama) if op.name.startswith("model.layers.1.")]
    assert "model.layers.1.mlp.down_proj" not in report.layers
    assert report.layers["model.layers.0.mlp.down_proj"] == SQNR_CEILING_DB


def test_bad_arguments(tiny_llama, tiny_gpt2, tiny_tokenizer, tiny_corpus):
    with pytest.raises(InputError, match="max_samples must be >= 1"):
        evaluate(tiny_llama, tiny_llama, tiny_tokenizer, tiny_corpus, max_samples=0)
    with pytest.raises(InputError, match="unknown metric 'kl'") as info:
        evaluate(tiny_llama, tiny_llama, tiny_tokenizer, tiny_corpus, gates=[{"metric": "kl", "max": 1}])
    assert info.value.errors[0]["loc"][:2] == ("gates", 0)
    with pytest.raises(InputError, match="expected a torch model"):
        evaluate(tiny_llama, "a model", tiny_tokenizer, tiny_corpus)
    small = copy.deepcopy(tiny_llama)
    small.resize_token_embeddings(tiny_llama.config.vocab_size + 8)
    with pytest.raises(InputError, match="candidate vocabulary is"):
        evaluate(tiny_llama, small, tiny_tokenizer, tiny_corpus, max_samples=1, seq_len=8)
    assert not any(m._forward_hooks for m in tiny_llama.modules())


def test_quantized_engine_keeps_layer_names(tmp_path, tiny_llama_dir, tiny_tokenizer, tiny_corpus):
    """A real engine from runtime.engines: fp8 W8A8 with calibrated activations and KV cache."""
    from runtime.accelerators import get_profile
    from runtime.calibration import calibrate
    from runtime.engines import build, load_engine
    from runtime.models import load_model
    from runtime.recipes import Recipe

    recipe = Recipe.from_dict({
        "name": "fp8-static",
        "default": {"weights": {"format": "fp8_e4m3", "strategy": "channel"},
                    "input_activations": {"format": "fp8_e4m3"}},
        "kv_cache_scheme": {"format": "fp8_e4m3"},
        "calibration": {"corpus": "tiny", "samples": 8, "seq_len": 64},
    })
    reference = load_model(tiny_llama_dir)
    calibration = calibrate(reference.model, reference.tokenizer, tiny_corpus, recipe,
                            model_hash=reference.content_hash)
    engine = build(tiny_llama_dir, recipe, get_profile("cpu"), calibration=calibration, out_root=tmp_path / "engines")
    candidate = load_engine(engine.path)
    report = evaluate(reference, candidate, reference.tokenizer, tiny_corpus, seq_len=64,
                      gates=[Gate(metric="top1_agreement", min=0.5), Gate(metric="sqnr_min_db", min=10.0)])
    assert report.unmatched_layers == []
    assert set(report.layers) == {op.name for op in linear_ops(reference.model)}
    # fp8 e4m3 rounding alone is about 30 dB; errors compound down the stack (measured 21.7-28.8 dB).
    assert all(15.0 < v < 45.0 for v in report.layers.values()), report.layers
    assert 0 < report.metrics.kl_mean < 0.05
    assert report.passed, [r.message for r in report.gate_results]
