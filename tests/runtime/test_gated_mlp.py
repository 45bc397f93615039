"""A fused int4 gate and up give their MLP silu(gate) * up from one GEMM, and the logits the unfused engine gives."""
import pytest
import torch
from torch import nn

from kernels.ops import gemm_w4a16_op
from runtime.engines import load_engine
from runtime.modules import QuantLinear
from runtime.modules.fused_linear import fuse_siblings
from runtime.modules.gated_mlp import fuse_gated_mlps
from runtime.recipes import Recipe, preset

INT4_G32 = Recipe.from_dict({"name": "int4g32", "default": {"weights": {
    "format": "int4", "strategy": "group", "group_size": 32}}})


def _mlps(model):
    return [layer.mlp for layer in model.model.layers]


def test_int4_mlps_take_one_gated_gemm_and_give_the_unfused_logits(tiny_engine):
    path = tiny_engine(INT4_G32)
    alone = load_engine(path, fuse=False).model
    state = torch.random.get_rng_state()
    fused = load_engine(path, fuse=True).model
    assert torch.equal(torch.random.get_rng_state(), state)  # the load's output check draws from its own
    assert all("forward" in mlp.__dict__ for mlp in _mlps(fused))
    assert not any("forward" in mlp.__dict__ for mlp in _mlps(alone))
    widths, member_calls = [], []
    for mlp in _mlps(fused):
        mlp.gate_proj.siblings.fused.register_forward_hook(lambda m, args, out: widths.append(out.shape[-1]))
    ids = torch.randint(3, 300, (2, 13))
    with torch.no_grad():
        want = alone(ids).logits
        got = fused(ids).logits
    # fp32 on the CPU: silu and the product of the fp32 sums, as the unfused MLP computes them.
    assert torch.equal(got, want)
    cfg = fused.config
    assert widths == [cfg.intermediate_size] * cfg.num_hidden_layers
    # A hook on gate or up (per-op evaluation) sees the op's own output: the MLP calls them as before.
    mlp, ref = _mlps(fused)[0], _mlps(alone)[0]
    mlp.up_proj.register_forward_hook(lambda m, args, out: member_calls.append(out))
    x = torch.randn(1, 3, cfg.hidden_size)
    with torch.no_grad():
        assert torch.equal(mlp(x), ref(x))
    assert len(member_calls) == 1 and torch.equal(member_calls[0], ref.up_proj(x))


def test_gated_mlps_record_the_statistics_of_gate_and_up(tiny_engine):
    path = tiny_engine(INT4_G32)
    ids = torch.randint(3, 300, (1, 9))
    stats = []
    for fuse in (False, True):
        model = load_engine(path, fuse=fuse).model
        ops = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
        for m in ops.values():
            m.observe = True
        with torch.no_grad():
            model(ids)
        stats.append({n: (m.activation_stats.amax, m.activation_stats.numel, m.activation_stats.calls)
                      for n, m in ops.items()})
    assert stats[0] == stats[1]


def test_only_int4_silu_mlps_whose_output_matches_are_rewired(tiny_engine):
    # fp8 W8A8: its gate and up fuse, but no kernel applies silu; the compiler fuses it with the act quant.
    fp8 = load_engine(tiny_engine(preset("fp8_w8a8")), fuse=True).model
    assert not any("forward" in mlp.__dict__ for mlp in _mlps(fp8))
    model = load_engine(tiny_engine(INT4_G32), fuse=False).model
    fuse_siblings(model)
    first, second = _mlps(model)
    first.act_fn = nn.GELU()

    class UpGatedMLP(type(second)):  # silu on up, not gate: same modules, another function
        def forward(self, x):
            return self.down_proj(self.gate_proj(x) * self.act_fn(self.up_proj(x)))

    second.__class__ = UpGatedMLP
    assert fuse_gated_mlps(model) == []
    second.__class__ = UpGatedMLP.__mro__[1]
    assert fuse_gated_mlps(model) == ["model.layers.1.mlp"]
    assert fuse_gated_mlps(model) == []  # once


def test_compiled_gated_mlp_is_one_graph_with_eager_numerics(tiny_engine, compiled_calls):
    model = load_engine(tiny_engine(INT4_G32), fuse=True).model
    calls = compiled_calls(model, torch.randint(3, 300, (1, 6)), gemm_w4a16_op)
    assert [n.kwargs.get("gated", False) for n in calls].count(True) == 2  # one per layer


@pytest.mark.gpu
def test_cuda_gated_mlps_match_the_unfused_kernels(tiny_engine):
    path = tiny_engine(INT4_G32)
    alone, fused = load_engine(path, device="cuda", fuse=False).model, load_engine(path, device="cuda").model
    assert all("forward" in mlp.__dict__ for mlp in _mlps(fused))
    for shape in ((1, 1), (2, 19)):  # the gated GEMV at a decode step, the tensor-core path at a prefill
        ids = torch.randint(3, 300, shape, device="cuda")
        with torch.no_grad():
            a, b = alone(ids).logits.float(), fused(ids).logits.float()
        assert torch.isfinite(b).all() and ((b - a).norm() / a.norm()).item() < 1e-2, shape
