"""Plans per accelerator profile: effective formats, kernels, and fallbacks that are never silent."""
import pytest

from runtime.accelerators import AcceleratorProfile, Support, compatibility_matrix, get_profile, register_profile
from runtime.errors import InputError
from runtime.plans import resolve
from runtime.recipes import Recipe, preset

INT4_G32 = {"name": "int4g32", "default": {"weights": {"format": "int4", "strategy": "group", "group_size": 32}}}


def test_h100_runs_fp8_w8a8_natively_without_fallbacks(tiny_llama):
    plan = resolve(preset("fp8_w8a8"), tiny_llama, get_profile("h100"))
    lin = [o for o in plan.ops if o.op_kind == "linear"]
    assert lin and all(o.weight == "fp8_e4m3" and o.activation == "fp8_e4m3" for o in lin)
    assert {o.kernel for o in lin} == {"kernels.gemm_fp8"}
    assert plan.fallbacks() == []
    head = plan.op("lm_head")
    assert head.op_kind == "lm_head" and head.weight == "bf16" and head.rule == "sensitive"


def test_a100_fp8_runs_weight_only_and_says_why(tiny_llama):
    plan = resolve(preset("fp8_w8a8"), tiny_llama, get_profile("a100"))
    q = plan.op("model.layers.0.self_attn.q_proj")
    assert q.weight == "fp8_e4m3" and q.activation == "bf16" and q.kernel == "dequantize+matmul"
    fields = {f.field: f for f in q.fallbacks}
    assert fields["input_activations"].requested == "fp8_e4m3" and fields["input_activations"].effective == "bf16"
    assert "no fp8 tensor cores" in fields["input_activations"].reason
    assert "dequantized to bf16" in fields["compute"].reason
    n_linear = sum(o.op_kind == "linear" for o in plan.ops)
    assert len(plan.fallbacks()) == 2 * n_linear


def test_a100_int8_and_int4_are_native(tiny_llama):
    assert resolve(preset("int8_w8a8"), tiny_llama, get_profile("a100")).fallbacks() == []
    plan = resolve(Recipe.from_dict(INT4_G32), tiny_llama, get_profile("a100"))
    assert plan.fallbacks() == [] and plan.op("model.layers.1.mlp.up_proj").kernel == "kernels.gemm_w4a16"


def test_cpu_is_reference_only(tiny_llama):
    plan = resolve(preset("fp8_w8a8"), tiny_llama, get_profile("cpu"))
    q = plan.op("model.layers.0.mlp.up_proj")
    assert q.kernel == "reference:kernels.gemm_fp8" and q.support == Support.emulated
    assert plan.fallbacks() == []


def test_e5m2_activations_fall_back_with_reason(tiny_llama):
    r = Recipe.from_dict({"name": "e5", "default": {"weights": {"format": "fp8_e5m2", "strategy": "channel"},
                                                    "input_activations": {"format": "fp8_e5m2", "strategy": "token",
                                                                          "dynamic": True}}})
    plan = resolve(r, tiny_llama, get_profile("h100"))
    op = plan.op("model.layers.0.mlp.up_proj")
    assert op.activation == "bf16" and op.weight == "fp8_e5m2" and op.kernel == "dequantize+matmul"
    assert {f.field for f in op.fallbacks} == {"input_activations", "compute"}


def test_mismatched_pair_has_no_kernel_and_falls_back(tiny_llama):
    r = Recipe.from_dict({"name": "m", "default": {
        "weights": {"format": "int4", "strategy": "group", "group_size": 32},
        "input_activations": {"format": "fp8_e4m3", "strategy": "token", "dynamic": True}}})
    op = resolve(r, tiny_llama, get_profile("h100")).op("model.layers.0.mlp.up_proj")
    assert op.activation == "bf16" and "no h100 kernel multiplies fp8_e4m3 activations by int4 weights" in op.fallbacks[0].reason


def test_plan_lists_attention_kv_cache_norms_and_embeddings(tiny_llama):
    r = Recipe.from_dict({"name": "kv", "kv_cache_scheme": {"format": "fp8_e4m3"}, "calibration": {"corpus": "c"}})
    plan = resolve(r, tiny_llama, get_profile("h100"))
    kinds = {o.op_kind for o in plan.ops}
    assert kinds == {"embedding", "linear", "lm_head", "attention", "kv_cache", "norm"}
    kv = plan.op("model.layers.0.self_attn.kv_cache")
    assert kv.kv_cache == "fp8_e4m3" and kv.scale_source == "calibrated:c"
    assert all(o.weight == "fp32" for o in plan.ops if o.op_kind == "norm")


def test_gpt2_conv1d_ops_are_planned(tiny_gpt2):
    plan = resolve(preset("int8_w8a8"), tiny_gpt2, get_profile("h100"))
    attn = plan.op("transformer.h.0.attn.c_attn")
    assert (attn.in_features, attn.out_features) == (64, 192) and attn.kernel == "kernels.gemm_int8"


def test_user_registered_profile_and_matrix():
    p = AcceleratorProfile(name="npu-test", description="int8 only", min_capability=None,
                           support={"weight": {"int8": (Support.native, "int8 MACs")},
                                    "activation": {"int8": (Support.native, "int8 MACs")}, "kv_cache": {}})
    register_profile(p, replace=True)
    assert get_profile("npu-test").check("fp8_e4m3", "weight")[0] == Support.unsupported
    rows = [r for r in compatibility_matrix() if r["accelerator"] == "npu-test"]
    assert {(r["format"], r["op_kind"]): r["support"] for r in rows}[("int8", "weight")] == "native"
    with pytest.raises(InputError, match="already exists"):
        register_profile(p)
    with pytest.raises(InputError, match="unknown accelerator 'tpu'"):
        get_profile("tpu")


def test_profile_check_returns_reason():
    supported, reason = get_profile("l4").check("fp8_e4m3", "activation")
    assert supported == Support.native and "sm_89" in reason
    supported, reason = get_profile("a100").check("fp8_e4m3", "activation")
    assert supported == Support.unsupported and "fp8 activations are unsupported" in reason
