"""Sibling ops (q/k/v, gate/up) of a loaded engine run as one GEMM each and give what they give alone."""
import pytest
import torch

from kernels.ops import gemm_w4a16_op, gemm_w8a8_op
from runtime.engines import load_engine
from runtime.modules import QuantLinear
from runtime.modules.fused_linear import FusedSiblings, compatible, fuse_siblings
from runtime.plans import OpPlan
from runtime.recipes import QuantArgs, Recipe, preset

RECIPES = {
    "bf16": preset("bf16"),
    "fp8_w8a8": preset("fp8_w8a8"),
    "int8_w8a8": preset("int8_w8a8"),
    "int4_g32": Recipe.from_dict({"name": "int4g32", "default": {"weights": {
        "format": "int4", "strategy": "group", "group_size": 32}}}),
    # KV-cache quantization hooks the k and v projections: their slices of the group pass through it.
    "fp8_w8a8_fp8_kv": Recipe.from_dict({"name": "kv", "default": {
        "weights": {"format": "fp8_e4m3", "strategy": "channel"},
        "input_activations": {"format": "fp8_e4m3", "strategy": "token", "dynamic": True}},
        "kv_cache_scheme": {"format": "fp8_e4m3", "dynamic": True}}),
}
GROUPS_PER_LAYER = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]]


@pytest.fixture
def engine_path(tiny_engine):
    return lambda recipe: tiny_engine(RECIPES[recipe])


def _layers(model) -> int:
    return model.config.num_hidden_layers


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_fused_engine_gives_the_unfused_logits_and_shares_the_weights(engine_path, recipe):
    path = engine_path(recipe)
    alone, fused = load_engine(path, fuse=False).model, load_engine(path, fuse=True).model
    ids = torch.randint(3, 300, (2, 19))
    with torch.no_grad():
        assert torch.equal(fused(ids).logits, alone(ids).logits)
    if recipe == "fp8_w8a8_fp8_kv":
        assert fused.model.layers[0].self_attn.kv_quant.numel == alone.model.layers[0].self_attn.kv_quant.numel > 0
    groups = {id(m.siblings) for m in fused.modules() if getattr(m, "siblings", None) is not None}
    assert len(groups) == 2 * _layers(fused)
    for layer in range(_layers(fused)):
        for names in GROUPS_PER_LAYER:
            members = [fused.get_submodule(f"model.layers.{layer}.{n}") for n in names]
            group = members[0].siblings
            assert isinstance(group, FusedSiblings) and group.members == members
            # Every member's tensors are views into the group's: loading fused holds no second copy.
            name = "weight_packed" if recipe == "int4_g32" else "weight"
            storage = getattr(group.fused, name).untyped_storage().data_ptr()
            assert all(getattr(m, name).untyped_storage().data_ptr() == storage for m in members)
    # On the CPU (reference paths) an engine loads unfused unless asked.
    assert not any(getattr(m, "siblings", None) for m in load_engine(path).model.modules())
    # The module tree, so the plan's inventory and the canaries' statistics, still lists each op alone.
    assert sum(isinstance(m, QuantLinear) for m in fused.modules()) == sum(
        isinstance(m, QuantLinear) for m in alone.modules())


def test_one_gemm_per_group_and_a_member_called_alone_computes_its_own_output(engine_path):
    model = load_engine(engine_path("fp8_w8a8"), fuse=True).model
    calls = []
    for group in {id(m.siblings): m.siblings for m in model.modules() if getattr(m, "siblings", None)}.values():
        group.fused.register_forward_hook(lambda mod, args, out: calls.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.randint(3, 300, (1, 7)))
    cfg = model.config
    kv = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert sorted(calls) == sorted([cfg.hidden_size + 2 * kv, 2 * cfg.intermediate_size] * _layers(model))
    # Another input than the group's last: the member runs the group GEMM for it and returns its own slice.
    k_proj = model.get_submodule("model.layers.0.self_attn.k_proj")
    alone = load_engine(engine_path("fp8_w8a8"), fuse=False).model.get_submodule("model.layers.0.self_attn.k_proj")
    x = torch.randn(3, cfg.hidden_size) * 2
    with torch.no_grad():
        assert torch.equal(k_proj(x), alone(x))
        assert torch.equal(k_proj(x.clone()), alone(x))  # an equal tensor is not the same input


def test_members_record_the_activation_statistics_they_would_alone(engine_path):
    path = engine_path("int8_w8a8")
    models = load_engine(path, fuse=False).model, load_engine(path, fuse=True).model
    ids = torch.randint(3, 300, (1, 11))
    stats = []
    for model in models:
        ops = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
        for m in ops.values():
            m.activation_stats.reset()
            m.observe = True
        with torch.no_grad():
            model(ids)
        stats.append({n: (m.activation_stats.amax, m.activation_stats.n_saturated, m.activation_stats.numel,
                          m.activation_stats.calls) for n, m in ops.items()})
    assert stats[0] == stats[1] and all(s[2] > 0 for s in stats[1].values())


def _op(n: int, k: int, static: bool) -> OpPlan:
    w = QuantArgs(format="fp8_e4m3", strategy="channel")
    a = QuantArgs(format="fp8_e4m3", strategy="tensor" if static else "token", dynamic=not static)
    return OpPlan(name="op", op_kind="linear", weight="fp8_e4m3", activation="fp8_e4m3", weight_args=w,
                  activation_args=a, kernel="reference", rule="rules[0]", reason="test", in_features=k, out_features=n)


def test_only_ops_of_the_same_numerics_fuse():
    k = 64
    static = [QuantLinear.from_float(torch.randn(n, k), None, _op(n, k, True), input_scale=s)
              for n, s in ((32, 0.02), (16, 0.02), (16, 0.05))]
    assert compatible(static[0], static[1])
    assert not compatible(static[0], static[2])  # its own calibrated input scale: its own quantized input
    dynamic = QuantLinear.from_float(torch.randn(16, k), None, _op(16, k, False))
    assert not compatible(static[0], dynamic)
    biased = QuantLinear.from_float(torch.randn(16, k), torch.randn(16), _op(16, k, False))
    assert not compatible(dynamic, biased)
    wide_k = QuantLinear.from_float(torch.randn(16, 2 * k), None, _op(16, 2 * k, False))
    assert not compatible(dynamic, wide_k)


def test_a_model_with_incompatible_siblings_keeps_them_apart(tiny_llama):
    # q and k with different static input scales, v like q: nothing of the attention group fuses.
    layer = tiny_llama.model.layers[0]
    for name, scale in (("q_proj", 0.02), ("k_proj", 0.05), ("v_proj", 0.02)):
        lin = getattr(layer.self_attn, name)
        setattr(layer.self_attn, name, QuantLinear.from_float(
            lin.weight, None, _op(lin.out_features, lin.in_features, True), input_scale=scale))
    assert fuse_siblings(tiny_llama) == []


@pytest.mark.parametrize("recipe, op", [("fp8_w8a8", gemm_w8a8_op), ("int4_g32", gemm_w4a16_op)])
def test_compiled_fused_engine_calls_fewer_gemms_and_matches_eager(engine_path, compiled_calls, recipe, op):
    # torch.compile traces the group's hand-over without a graph break: 4 GEMMs a layer instead of 7.
    path = engine_path(recipe)
    ids = torch.randint(3, 300, (1, 5))
    counts = [len(compiled_calls(load_engine(path, fuse=fuse).model, ids, op)) for fuse in (False, True)]
    layers = 2
    assert counts[0] - counts[1] == 3 * layers and counts[1] >= 4 * layers


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["bf16", "fp8_w8a8", "int4_g32"])
def test_cuda_engines_fuse_by_default_and_match_the_unfused_kernels(engine_path, recipe):
    # On the GPU the group's GEMM runs other kernel configs (its N differs), so the sums may differ in
    # order: the logits agree to bf16 rounding, at a decode step and at a prefill.
    path = engine_path(recipe)
    alone, fused = load_engine(path, device="cuda", fuse=False).model, load_engine(path, device="cuda").model
    assert any(getattr(m, "siblings", None) for m in fused.modules())
    for shape in ((1, 1), (2, 19)):
        ids = torch.randint(3, 300, shape, device="cuda")
        with torch.no_grad():
            a, b = alone(ids).logits.float(), fused(ids).logits.float()
        assert torch.isfinite(b).all() and ((b - a).norm() / a.norm()).item() < 1e-2, shape
