"""Per-output-feature mixed layers: exact composition of their parts, recipes that name rows, build and load."""
import pytest
import torch

from runtime.accelerators import get_profile
from runtime.engines import build, load_engine
from runtime.modules import ChannelPart, MixedLinear, QuantLinear
from runtime.plans import OpPlan, resolve
from runtime.recipes import QuantArgs, Recipe, RecipeError

INT4_G32 = {"format": "int4", "strategy": "group", "group_size": 32}
INT8_W = {"format": "int8", "strategy": "channel"}
FP8_W = {"format": "fp8_e4m3", "strategy": "channel"}
INT8_A = {"format": "int8", "strategy": "token", "dynamic": True}

# (in, out) with odd output counts; inputs are multiples of the int4 group.
SHAPES = [(64, 37), (96, 130), (256, 7)]
TOKENS = [1, 5, 33]
# Part formats: (weights, activations) per part; None keeps that tensor wide.
MIXES = {
    "int4+int8": [(INT4_G32, None), (INT8_W, None)],
    "int4+bf16": [(INT4_G32, None), ({"format": "bf16"}, None)],
    "int8a8+fp8+int4": [(INT8_W, INT8_A), (FP8_W, None), (INT4_G32, None)],
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matmuls gain nothing from threads, and on a loaded 2-core machine two threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _part_plan(name, k, rows, weights, acts, kernel="reference"):
    w = QuantArgs(**weights)
    a = QuantArgs(**acts) if acts else None
    return OpPlan(name=name, op_kind="linear", weight=w.format, activation=a.format if a else "bf16",
                  weight_args=None if w.is_wide else w, activation_args=a, kernel=kernel, rule="rules[0]",
                  reason="test", in_features=k, out_features=len(rows), channels=rows)


def _mixed_plan(k, n, mix, gen):
    # Rows dealt to parts at random, so every part owns scattered, non-contiguous output features.
    owner = torch.randint(0, len(mix), (n,), generator=gen)
    owner[: len(mix)] = torch.arange(len(mix))  # every part owns at least one row
    parts = [_part_plan("op", k, (owner == i).nonzero().squeeze(1).tolist(), w, a) for i, (w, a) in enumerate(mix)]
    return OpPlan(name="op", op_kind="linear", weight=parts[0].weight, kernel="mixed", rule="rules[0]", reason="test",
                  in_features=k, out_features=n, parts=parts)


@pytest.mark.parametrize("k, n", SHAPES)
@pytest.mark.parametrize("m", TOKENS)
@pytest.mark.parametrize("mix", MIXES, ids=list(MIXES))
def test_mixed_layer_equals_the_composition_of_its_parts(k, n, m, mix):
    gen = torch.Generator().manual_seed(k * 1000 + n + m)
    weight = torch.randn(n, k, generator=gen) / k**0.5
    bias = torch.randn(n, generator=gen)
    x = torch.randn(3, m, k, generator=gen)
    plan = _mixed_plan(k, n, MIXES[mix], gen)
    layer = MixedLinear.from_float(weight, bias, plan)
    y = layer(x)
    assert y.shape == (3, m, n) and torch.isfinite(y).all()
    # Reference composition in fp64: each part's rows through that format's uniform layer over the whole weight.
    x2 = x.reshape(-1, k)
    ref = torch.empty(x2.shape[0], n, dtype=torch.float64)
    for part in plan.parts:
        rows = torch.tensor(part.channels)
        whole = QuantLinear.from_float(weight, bias, part.model_copy(update={"out_features": n, "channels": None}))
        ref[:, rows] = whole(x2).double()[:, rows]
    assert _rel(y.reshape(-1, n), ref) < 1e-6
    # And the dense weight it reports is what it multiplies by.
    dense = x2.double() @ layer.dequantized_weight(torch.float64).t() + bias.double()
    assert _rel(y.reshape(-1, n), dense) < (1e-6 if not any(a for _, a in MIXES[mix]) else 5e-2)
    # Quantized parts are not the float layer, but close to it.
    assert 0 < _rel(y.reshape(-1, n), x2.double() @ weight.double().t() + bias.double()) < 0.2


def test_parts_are_not_ops_of_their_own_and_round_trip_through_state():
    from runtime.models import linear_ops

    gen = torch.Generator().manual_seed(7)
    plan = _mixed_plan(64, 37, MIXES["int8a8+fp8+int4"], gen)
    layer = MixedLinear.from_float(torch.randn(37, 64, generator=gen), None, plan)
    model = torch.nn.Sequential(layer)
    assert [op.name for op in linear_ops(model)] == ["0"]
    assert all(isinstance(p, ChannelPart) for p in layer.parts)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    assert {"rows_1", "rows_2"} <= set(state) and "rows_0" not in state and not any(k.startswith("index_") for k in state)
    assert state["rows_1"].dtype == torch.int16
    again = MixedLinear.empty_like_state(plan, state, "")
    x = torch.randn(4, 64, generator=gen)
    assert torch.equal(again(x), layer(x))


def test_saturation_is_counted_once_for_the_whole_op():
    gen = torch.Generator().manual_seed(3)
    mix = [(INT8_W, INT8_A), (INT4_G32, None), (INT8_W, INT8_A)]
    layer = MixedLinear.from_float(torch.randn(40, 64, generator=gen), None, _mixed_plan(64, 40, mix, gen))
    layer.observe = True
    x = torch.randn(5, 64, generator=gen)
    layer(x)
    stats = layer.activation_stats
    assert stats.calls == 1 and stats.numel == x.numel()
    assert stats.amax == pytest.approx(float(x.abs().max()))


def test_channel_part_must_cover_every_row():
    gen = torch.Generator().manual_seed(0)
    plan = _mixed_plan(64, 10, MIXES["int4+int8"], gen)
    broken = plan.model_copy(update={"parts": [plan.parts[0]]})
    with pytest.raises(ValueError, match="exactly one part"):
        MixedLinear.from_float(torch.randn(10, 64), None, broken)


# --- recipes that name output features ---------------------------------------------------------
def _recipe(channels_a, channels_b=None, target="model.layers.0.mlp.up_proj"):
    overrides = [{"channels": channels_a, "weights": INT8_W, "reason": "hot output features"}]
    if channels_b is not None:
        overrides.append({"channels": channels_b, "weights": {"format": "bf16"}, "reason": "hottest"})
    return {"name": "mixed", "default": {"weights": INT4_G32},
            "rules": [{"targets": [target], "weights": INT4_G32, "reason": "searched", "output_channels": overrides}]}


def test_overlapping_output_channels_are_refused_by_name():
    with pytest.raises(RecipeError, match="repeats channel 5") as exc:
        Recipe.from_dict(_recipe([1, 5], [5, 9]))
    assert exc.value.errors[0]["loc"][:3] == ("rules", 0, "output_channels")


def test_negative_channels_are_refused():
    with pytest.raises(RecipeError, match="must be >= 0"):
        Recipe.from_dict(_recipe([-1, 2]))


def test_out_of_range_channels_name_the_field(tiny_llama):
    with pytest.raises(RecipeError, match="out of range") as exc:
        resolve(Recipe.from_dict(_recipe([3, 128])), tiny_llama, get_profile("cpu"))
    assert exc.value.errors[0]["loc"] == ("rules", 0, "output_channels", 0, "channels")


def test_rules_without_output_channels_serialize_as_before():
    r = Recipe.from_dict({"name": "r", "rules": [{"targets": ["Linear"], "weights": INT8_W, "reason": "x"}]})
    assert "output_channels" not in r.to_dict()["rules"][0]
    mixed = Recipe.from_dict(_recipe([9, 2, 4]))
    assert mixed.rules[0].output_channels[0].channels == [2, 4, 9]
    assert Recipe.from_yaml(mixed.to_yaml()).content_hash() == mixed.content_hash()


def test_plan_splits_a_mixed_op_into_parts_with_their_kernels(tiny_llama):
    plan = resolve(Recipe.from_dict(_recipe([0, 7, 100], [3])), tiny_llama, get_profile("h100"))
    op = plan.op("model.layers.0.mlp.up_proj")
    assert [(p.weight, len(p.channels)) for p in op.parts] == [("int4", 124), ("int8", 3), ("bf16", 1)]
    assert op.kernel == "mixed(int4:kernels.gemm_w4a16 + int8:dequantize+matmul + bf16:matmul)"
    assert sorted(c for p in op.parts for c in p.channels) == list(range(128))
    assert not plan.op("model.layers.0.mlp.down_proj").parts
    assert "mixed(W:int4 A:bf16 x124 + W:int8 A:bf16 x3 + W:bf16 A:bf16 x1)" in plan.summary()["formats"]


def test_mixed_engine_builds_loads_and_matches_the_reference(tmp_path, tiny_llama, tiny_tokenizer):
    tiny_llama.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    recipe = Recipe.from_dict(_recipe(list(range(0, 128, 3)), [1, 2]))
    uniform = Recipe.from_dict({"name": "u", "default": {"weights": INT4_G32}})
    e = build(tmp_path / "m", recipe, get_profile("cpu"), out_root=tmp_path / "e")
    u = build(tmp_path / "m", uniform, get_profile("cpu"), out_root=tmp_path / "e")
    loaded = load_engine(e.path)
    layer = loaded.model.model.layers[0].mlp.up_proj
    assert isinstance(layer, MixedLinear) and [p.out_features for p in layer.parts] == [83, 43, 2]
    ids = torch.randint(3, len(tiny_tokenizer), (2, 16))
    loaded_u = load_engine(u.path)
    with torch.no_grad():
        ref = tiny_llama(ids).logits
        out = loaded.model(ids).logits
    assert 0 < _rel(out, ref) < 0.5
    # Rows left in int4 are the uniform engine's rows bit for bit; rows moved to int8 or bf16 lose less.
    w = tiny_llama.model.layers[0].mlp.up_proj.weight.detach()
    mixed_w = layer.dequantized_weight()
    uniform_w = loaded_u.model.model.layers[0].mlp.up_proj.dequantized_weight()
    int4_rows, wider = layer.indices()[0], torch.cat(layer.indices()[1:])
    assert torch.equal(mixed_w[int4_rows], uniform_w[int4_rows])
    assert (mixed_w[wider] - w[wider]).norm() < 0.1 * (uniform_w[wider] - w[wider]).norm()
    # Bytes: 43 int8 rows (+ an fp32 scale) and 2 bf16 rows instead of int4 g32 (4 bits + bf16 scale and zero per 32),
    # plus a two-byte index per row moved out of the main part; everything else as in the uniform engine.
    k = 64
    int4_row = k // 2 + 2 * 2 * (k // 32)
    delta = 43 * (k + 4 - int4_row) + 2 * (2 * k - int4_row) + 45 * 2
    assert e.manifest["bytes"]["linear_ops"] - u.manifest["bytes"]["linear_ops"] == delta
