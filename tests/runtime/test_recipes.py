"""Recipe schema: YAML/JSON round trips, content-hash stability, and validation that names the field."""
import json

import pytest
import yaml

from runtime.recipes import PRESETS, Recipe, RecipeError, preset, resolve_scheme, validate_for_model
from runtime.models import linear_ops

FP8 = {"format": "fp8_e4m3", "strategy": "channel"}
FP8_DYN = {"format": "fp8_e4m3", "strategy": "token", "dynamic": True}


def _locs(exc) -> list[tuple]:
    return [e["loc"] for e in exc.value.errors]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_yaml_and_json(name):
    r = preset(name)
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert Recipe.from_json(r.to_json()) == r


def test_content_hash_ignores_key_order_whitespace_and_spelled_out_defaults():
    a = Recipe.from_yaml("name: x\ndefault:\n  weights: {format: int8, strategy: channel}\n")
    doc = {"default": {"accumulator": "fp32", "weights": {"strategy": "channel", "format": "int8", "symmetric": True}},
           "rules": [], "name": "x"}
    b = Recipe.from_json(json.dumps(doc, indent=7))
    assert a.content_hash() == b.content_hash()
    c = Recipe.from_yaml("name: x\ndefault:\n  weights: {format: int8, strategy: tensor}\n")
    assert c.content_hash() != a.content_hash()
    assert a.content_hash().startswith("sha256:") and len(a.content_hash()) == 71


def test_unknown_format_names_the_field():
    with pytest.raises(RecipeError) as exc:
        Recipe.from_dict({"name": "x", "rules": [{"targets": ["Linear"], "weights": {"format": "fp6"}, "reason": "r"}]})
    assert ("rules", 0, "weights", "format") in _locs(exc)


def test_unknown_field_is_refused():
    with pytest.raises(RecipeError) as exc:
        Recipe.from_dict({"name": "x", "default": {"weights": {"format": "int8", "bitz": 3}}})
    assert ("default", "weights", "bitz") in _locs(exc)


def test_every_exception_needs_a_reason():
    with pytest.raises(RecipeError) as exc:
        Recipe.from_dict({"name": "x", "rules": [{"targets": ["lm_head"], "weights": FP8}],
                          "ignore": [{"target": "model.layers.0.mlp.down_proj"}]})
    assert ("rules", 0, "reason") in _locs(exc) and ("ignore", 0, "reason") in _locs(exc)


def test_static_fp8_activation_needs_calibration_source():
    with pytest.raises(RecipeError, match="need a calibration source") as exc:
        Recipe.from_dict({"name": "x", "default": {"weights": FP8, "input_activations": {"format": "fp8_e4m3"}}})
    assert _locs(exc) == [("default", "input_activations", "dynamic")]
    ok = Recipe.from_dict({"name": "x", "default": {"weights": FP8, "input_activations": {"format": "fp8_e4m3"}},
                           "calibration": {"corpus": "calib-en-short"}})
    assert ok.calibration.samples == 64


def test_kv_cache_format_needs_scale_source():
    with pytest.raises(RecipeError, match="needs a scale source") as exc:
        Recipe.from_dict({"name": "x", "kv_cache_scheme": {"format": "fp8_e4m3"}})
    assert _locs(exc) == [("kv_cache_scheme", "dynamic")]
    assert Recipe.from_dict({"name": "x", "kv_cache_scheme": {"format": "fp8_e4m3", "dynamic": True}})


def test_two_rules_that_contradict():
    with pytest.raises(RecipeError, match="contradicts rules\\[0\\]") as exc:
        Recipe.from_dict({"name": "x", "rules": [
            {"targets": ["lm_head"], "weights": FP8, "reason": "a"},
            {"targets": ["lm_head"], "weights": {"format": "int8", "strategy": "channel"}, "reason": "b"}]})
    assert _locs(exc) == [("rules", 1, "targets", 0)]


def test_ignored_and_quantized_is_a_contradiction():
    with pytest.raises(RecipeError, match="is ignored but rules\\[0\\] quantizes it"):
        Recipe.from_dict({"name": "x", "rules": [{"targets": ["lm_head"], "weights": FP8, "reason": "a"}],
                          "ignore": [{"target": "lm_head", "reason": "b"}]})


@pytest.mark.parametrize("args, msg", [
    ({"format": "int4"}, "int4 needs strategy 'group'"),
    ({"format": "int4", "strategy": "group", "group_size": 48}, "group_size must be 32, 64 or 128"),
    ({"format": "int8", "strategy": "token"}, "use `dynamic: true`"),
    ({"format": "int8", "strategy": "channel", "symmetric": False}, "asymmetric quantization is supported for int4"),
])
def test_quant_args_messages(args, msg):
    with pytest.raises(RecipeError, match=msg):
        Recipe.from_dict({"name": "x", "default": {"weights": args}})


def test_malformed_yaml_is_an_input_error():
    with pytest.raises(RecipeError, match="malformed YAML") as exc:
        Recipe.from_yaml("name: [unclosed")
    assert _locs(exc) == [("body",)]


def test_group_size_must_divide_input_dim(tiny_llama):
    # tiny_llama's hidden size is 64: a group of 128 cannot tile it.
    r = Recipe.from_dict({"name": "x", "default": {"weights": {"format": "int4", "strategy": "group", "group_size": 128}}})
    with pytest.raises(RecipeError, match="group_size 128 does not divide the input dimension 64") as exc:
        validate_for_model(r, tiny_llama)
    assert ("default", "weights", "group_size") in _locs(exc)


def test_target_matching_no_module(tiny_llama):
    r = Recipe.from_dict({"name": "x", "rules": [{"targets": ["re:.*experts\\."], "weights": FP8, "reason": "moe"}]})
    with pytest.raises(RecipeError, match="matches no module") as exc:
        validate_for_model(r, tiny_llama)
    assert _locs(exc) == [("rules", 0, "targets", 0)]


def test_rule_contradicting_earlier_rule_on_the_model(tiny_llama):
    r = Recipe.from_dict({"name": "x", "rules": [
        {"targets": ["re:.*mlp\\."], "weights": FP8, "reason": "a"},
        {"targets": ["model.layers.0.mlp.down_proj"], "weights": {"format": "int8", "strategy": "channel"},
         "reason": "b"}]})
    with pytest.raises(RecipeError, match="first match wins") as exc:
        validate_for_model(r, tiny_llama)
    assert _locs(exc) == [("rules", 1, "targets", 0)]


def test_first_match_wins_and_logits_stay_wide(tiny_llama):
    r = Recipe.from_dict({"name": "x", "default": {"weights": {"format": "int8", "strategy": "channel"}},
                          "rules": [{"targets": ["re:model\\.layers\\.0\\."], "weights": FP8, "reason": "first"},
                                    {"targets": ["re:.*q_proj"], "weights": {"format": "bf16"}, "reason": "second"}],
                          "ignore": [{"target": "model.layers.1.mlp.up_proj", "reason": "kept"}]})
    ops = {op.name: op for op in linear_ops(tiny_llama)}
    assert resolve_scheme(r, ops["model.layers.0.self_attn.q_proj"])[1] == "rules[0]"
    assert resolve_scheme(r, ops["model.layers.1.self_attn.q_proj"])[1] == "rules[1]"
    assert resolve_scheme(r, ops["model.layers.1.mlp.up_proj"])[:2] == (None, "ignore[0]")
    assert resolve_scheme(r, ops["model.layers.1.mlp.down_proj"])[1] == "default"
    scheme, label, reason = resolve_scheme(r, ops["lm_head"])
    assert scheme is None and label == "sensitive" and "logits" in reason


def test_yaml_written_by_to_yaml_is_minimal():
    doc = yaml.safe_load(preset("int4_w4a16_g128").to_yaml())
    assert doc["default"]["weights"] == {"format": "int4", "strategy": "group", "group_size": 128}
