import json

import pytest
import torch

from runtime.calibration import Calibration, CalibrationError, calibrate
from runtime.calibration.statistics import OUTLIER_RATIO
from runtime.corpora import Corpus
from runtime.errors import InputError
from runtime.models import attention_layers, linear_ops
from runtime.recipes import Recipe


def _reference_inputs(model, tokenizer, corpus, seq_len):
    """Every linear's input and every k/v output, captured sample by sample (no padding)."""
    inputs: dict[str, list[torch.Tensor]] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for op in linear_ops(model):
        def hook(_m, args, out, name=op.name):
            inputs.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).double())
            outputs.setdefault(name, []).append(out.detach().reshape(-1, out.shape[-1]).double())
        handles.append(op.module.register_forward_hook(hook))
    with torch.no_grad():
        for sample in corpus:
            ids = tokenizer(sample.text, truncation=True, max_length=seq_len, return_tensors="pt")["input_ids"]
            model(input_ids=ids)
    for h in handles:
        h.remove()
    return ({k: torch.cat(v) for k, v in inputs.items()}, {k: torch.cat(v) for k, v in outputs.items()})


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
def test_statistics_match_a_per_sample_reference(request, model_fixture, tiny_tokenizer, tiny_corpus):
    model = request.getfixturevalue(model_fixture)
    # batch_size=3 pads most batches: padded rows must not reach the statistics.
    cal = calibrate(model, tiny_tokenizer, tiny_corpus, seq_len=64, batch_size=3)
    inputs, _ = _reference_inputs(model, tiny_tokenizer, tiny_corpus, 64)
    assert set(cal.tensors) == {op.name for op in linear_ops(model)} == set(inputs)
    for name, x in inputs.items():
        stats = cal.tensors[name]
        a = x.abs()
        assert stats.tokens == x.shape[0] and stats.channels == x.shape[1]
        assert stats.amax == pytest.approx(float(a.max()), rel=1e-5), name
        torch.testing.assert_close(torch.tensor(stats.channel_amax, dtype=torch.float64), a.amax(dim=0),
                                   rtol=1e-5, atol=1e-7)
        assert stats.percentile_exact
        for q in ("99", "99.9", "99.99"):
            assert stats.percentiles[q] == pytest.approx(float(torch.quantile(a.reshape(-1), float(q) / 100)),
                                                         rel=1e-4), (name, q)
        assert stats.rms == pytest.approx(float(x.pow(2).mean().sqrt()), rel=1e-4)
        assert stats.histogram.zeros + sum(stats.histogram.counts) == x.numel()
        assert stats.observer_amax == stats.amax  # minmax
    assert cal.meta.samples == len(tiny_corpus)
    assert cal.meta.tokens == next(iter(inputs.values())).shape[0]
    assert cal.meta.corpus_hash == tiny_corpus.content_hash


def test_llama_kv_amax_per_kv_head(tiny_llama, tiny_tokenizer, tiny_corpus):
    cal = calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, seq_len=64, batch_size=4)
    _, outputs = _reference_inputs(tiny_llama, tiny_tokenizer, tiny_corpus, 64)
    assert set(cal.kv_heads) == set(attention_layers(tiny_llama)) == {
        "model.layers.0.self_attn", "model.layers.1.self_attn"}
    for layer, stats in cal.kv_heads.items():
        assert (stats.heads, stats.head_dim) == (2, 16)  # grouped-query: 2 KV heads, not 4
        k = outputs[f"{layer}.k_proj"].abs().reshape(-1, 2, 16).amax(dim=(0, 2))
        v = outputs[f"{layer}.v_proj"].abs().reshape(-1, 2, 16).amax(dim=(0, 2))
        torch.testing.assert_close(torch.tensor(stats.k_amax, dtype=torch.float64), k, rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.tensor(stats.v_amax, dtype=torch.float64), v, rtol=1e-5, atol=0)
        assert cal.kv[layer] == [max(a, b) for a, b in zip(stats.k_amax, stats.v_amax)]
        k_scale, v_scale = cal.kv_scales(layer, 448.0)
        assert k_scale == pytest.approx([a / 448.0 for a in stats.k_amax])
        assert v_scale == pytest.approx([a / 448.0 for a in stats.v_amax])


def test_gpt2_kv_amax_from_fused_c_attn_slices(tiny_gpt2, tiny_tokenizer, tiny_corpus):
    cal = calibrate(tiny_gpt2, tiny_tokenizer, tiny_corpus, seq_len=64)
    _, outputs = _reference_inputs(tiny_gpt2, tiny_tokenizer, tiny_corpus, 64)
    assert set(cal.kv_heads) == {"transformer.h.0.attn", "transformer.h.1.attn"}
    for layer, stats in cal.kv_heads.items():
        qkv = outputs[f"{layer}.c_attn"].abs()  # [tokens, 3 * 64]: q | k | v
        assert (stats.heads, stats.head_dim) == (4, 16)
        k = qkv[:, 64:128].reshape(-1, 4, 16).amax(dim=(0, 2))
        v = qkv[:, 128:].reshape(-1, 4, 16).amax(dim=(0, 2))
        torch.testing.assert_close(torch.tensor(stats.k_amax, dtype=torch.float64), k, rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.tensor(stats.v_amax, dtype=torch.float64), v, rtol=1e-5, atol=0)


def test_outlier_channel_is_found(tiny_llama, tiny_tokenizer, tiny_corpus):
    with torch.no_grad():
        tiny_llama.model.layers[0].post_attention_layernorm.weight[5] = 30.0  # feeds gate_proj and up_proj
    cal = calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, samples=4, seq_len=32)
    stats = cal.tensors["model.layers.0.mlp.up_proj"]
    assert 5 in stats.outlier_channels
    median = sorted(stats.channel_amax)[len(stats.channel_amax) // 2]
    assert all(stats.channel_amax[c] > OUTLIER_RATIO * median * 0.99 for c in stats.outlier_channels)
    assert 5 not in cal.tensors["model.layers.0.self_attn.q_proj"].outlier_channels


@pytest.mark.parametrize("observer, kwargs", [("percentile", {"q": 99.0}), ("mse", {"fmt": "int8"}),
                                              ("amax_history", {"length": 2})])
def test_observer_choice_sets_the_scale(tiny_gpt2, tiny_tokenizer, tiny_corpus, observer, kwargs):
    cal = calibrate(tiny_gpt2, tiny_tokenizer, tiny_corpus, seq_len=48, batch_size=2,
                    observer=observer, observer_kwargs=kwargs)
    assert cal.meta.observer == observer and cal.meta.observer_kwargs == kwargs
    for name, stats in cal.tensors.items():
        assert 0 < stats.observer_amax <= stats.amax * (1 + 1e-6)
        assert cal.activation_scale(name, 448.0) == pytest.approx(stats.observer_amax / 448.0)
    if observer == "percentile":
        stats = cal.tensors["transformer.h.0.mlp.c_fc"]
        assert stats.observer_amax == pytest.approx(stats.percentiles["99"], rel=1e-5)


def test_recipe_supplies_settings(tiny_llama, tiny_tokenizer, tiny_corpus):
    recipe = Recipe.from_dict({
        "name": "static-fp8",
        "default": {"weights": {"format": "fp8_e4m3", "strategy": "channel"},
                    "input_activations": {"format": "fp8_e4m3", "observer": "percentile",
                                          "observer_kwargs": {"q": 99.9}}},
        "calibration": {"corpus": "tiny", "samples": 3, "seq_len": 16},
    })
    cal = calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, recipe)
    assert (cal.meta.samples, cal.meta.seq_len, cal.meta.observer) == (3, 16, "percentile")
    assert cal.meta.observer_kwargs == {"q": 99.9}
    assert all(s.tokens <= 3 * 16 for s in cal.tensors.values())
    # Explicit arguments win over the recipe.
    assert calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, recipe, samples=2).meta.samples == 2


def test_save_load_round_trip_and_hash(tmp_path, tiny_gpt2, tiny_tokenizer, tiny_corpus):
    cal = calibrate(tiny_gpt2, tiny_tokenizer, tiny_corpus, samples=5, seq_len=32, model_hash="sha256:abc")
    directory = cal.save(tmp_path / "cal")
    assert sorted(p.name for p in directory.iterdir()) == ["calibration.json"]
    again = Calibration.load(directory)
    assert again == cal
    assert again.content_hash == cal.content_hash and cal.content_hash.startswith("sha256:")
    assert Calibration.load(directory / "calibration.json").content_hash == cal.content_hash
    assert again.metadata["model_hash"] == "sha256:abc"
    assert again.metadata["corpus_hash"] == tiny_corpus.content_hash
    document = json.loads((directory / "calibration.json").read_text())
    assert set(document) == {"meta", "tensors", "kv_heads"}
    other = calibrate(tiny_gpt2, tiny_tokenizer, tiny_corpus, samples=4, seq_len=32, model_hash="sha256:abc")
    assert other.content_hash != cal.content_hash


def test_never_a_silent_scale(tiny_gpt2, tiny_tokenizer, tiny_corpus, tmp_path):
    cal = calibrate(tiny_gpt2, tiny_tokenizer, tiny_corpus, samples=2, seq_len=16)
    with pytest.raises(CalibrationError, match="no calibration statistics for module 'model.layers.0.q_proj'") as info:
        cal.activation_scale("model.layers.0.q_proj", 448.0)
    assert info.value.errors[0]["loc"] == ("tensors", "model.layers.0.q_proj")
    with pytest.raises(CalibrationError, match="no KV-cache statistics for attention layer 'h.9.attn'"):
        cal.kv_scales("h.9.attn", 448.0)
    with pytest.raises(InputError, match="fmax"):
        cal.activation_scale("transformer.h.0.attn.c_attn", 0.0)
    with pytest.raises(CalibrationError, match="no calibration at"):
        Calibration.load(tmp_path / "missing")
    scales = cal.scales(127.0)
    assert set(scales) == set(cal.tensors) and all(s > 0 for s in scales.values())


def test_progress_and_sample_limit(tiny_llama, tiny_tokenizer, tiny_corpus):
    calls = []
    cal = calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, samples=5, seq_len=16, batch_size=2,
                    progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert cal.meta.samples == 5


def test_model_is_left_as_it_was(tiny_llama, tiny_tokenizer, tiny_corpus):
    tiny_llama.train()
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, samples=2, seq_len=16)
    assert tiny_llama.training
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())
    assert not any(m._forward_hooks for m in tiny_llama.modules())


def test_bad_arguments(tiny_llama, tiny_tokenizer, tiny_corpus, tmp_path):
    with pytest.raises(InputError, match="samples must be >= 1"):
        calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, samples=0)
    with pytest.raises(InputError, match="seq_len must be >= 1"):
        calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, seq_len=0)
    with pytest.raises(InputError, match="unknown observer 'max'"):
        calibrate(tiny_llama, tiny_tokenizer, tiny_corpus, observer="max")
    with pytest.raises(InputError, match="does not exist"):
        calibrate(tiny_llama, tiny_tokenizer, tmp_path / "none.jsonl")
    assert not any(m._forward_hooks for m in tiny_llama.modules())


def test_corpus_path_is_accepted(tiny_gpt2, tiny_tokenizer, tiny_corpus_path):
    cal = calibrate(tiny_gpt2, tiny_tokenizer, tiny_corpus_path, samples=2, seq_len=8)
    assert cal.meta.corpus_hash == Corpus.load(tiny_corpus_path).content_hash
    assert cal.meta.corpus_name == "tiny"
