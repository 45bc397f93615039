"""Sibling linear ops that read one input run as one GEMM: a layer's q, k and v projections, an MLP's gate and up.

At decode a linear op streams its weights, and a narrow one streams them slowly: on the H100 Llama-3-8B's k and v
projections (1024 x 4096) read their int4 weights at half the bandwidth of a 4096 x 4096 op (2.9 against 6.1 µs
for a quarter of the bytes; bf16: 7.4 against 16.7, bench/results/w4a16-gemv-sweep-h100.json), and each op is a
launch of its own. Fusing is an execution detail, as in TensorRT-LLM's and vLLM's fused QKV:
every op keeps its plan, its module and its activation statistics. Its tensors become row slices (views) of the
group's concatenated ones, so memory does not grow and a member called on its own still computes its own output.

Whichever member is called first with an input runs the group's GEMM and keeps the outputs; the others, called
with that very tensor, take their slices. Only ops whose numerics are the same fuse: one weight and activation
format, strategy and group size, dynamic activations or one static input scale; with per-token activation
scales and per-channel (or per-group) weight scales each output element is what the op alone computes.
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.models import sibling_groups
from runtime.modules.quant_linear import QuantLinear

# Buffers split by output rows (dim 0); `input_scale` is shared.
_ROW_BUFFERS = ("weight", "weight_packed", "weight_scale", "weight_zero", "bias")


class _MembersStats:
    """The fused op's activation statistics, recorded for each member that observes (they share the input)."""

    def __init__(self, members: list[QuantLinear]):
        self.members = members

    def update(self, amax: float, n_saturated: int, numel: int) -> None:
        for m in self.members:
            if m.observe:
                m.activation_stats.update(amax, n_saturated, numel)


class FusedSiblings:
    """One GEMM for QuantLinear ops that read the same input; held by each member as ``member.siblings``.

    Not an nn.Module: the model's module tree (and so the plan's op inventory, the canaries' statistics and
    the state dict) still holds the members alone.
    """

    def __init__(self, members: list[QuantLinear]):
        first = members[0]
        fused = QuantLinear(first.in_features, sum(m.out_features for m in members),
                            weight_format=first.weight_format, activation_format=first.activation_format,
                            weight_strategy=first.weight_strategy, group_size=first.group_size,
                            act_dynamic=first.act_dynamic, is_lm_head=False, kernel=first.kernel)
        if first.bias is None:
            fused.bias = None
        for name in _ROW_BUFFERS:
            if getattr(first, name, None) is not None:
                fused.register_buffer(name, torch.cat([getattr(m, name) for m in members]))
        if getattr(first, "input_scale", None) is not None:
            fused.register_buffer("input_scale", first.input_scale.clone())
        fused.activation_stats = _MembersStats(members)
        fused.eval()
        self.fused, self.members = fused, members
        self.sizes = [m.out_features for m in members]
        # (input, outputs, members yet to take theirs) of the last group GEMM.
        self._pending: tuple[torch.Tensor, tuple[torch.Tensor, ...], int] | None = None
        start = 0
        for i, m in enumerate(members):
            for name in _ROW_BUFFERS:
                if getattr(fused, name, None) is not None:
                    m._buffers[name] = fused._buffers[name][start:start + m.out_features]
            if getattr(fused, "input_scale", None) is not None:
                m._buffers["input_scale"] = fused.input_scale
            m.siblings, m.sibling_index = self, i
            start += m.out_features

    def gated(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate(x)) * up(x) for a [gate, up] group, in one GEMM (runtime.modules.gated_mlp)."""
        self.fused.observe = any(m.observe for m in self.members)
        return self.fused(x, gated=True)

    def output(self, member: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        i = member.sibling_index
        pending = self._pending
        if pending is not None and pending[0] is x:
            left = pending[2] - 1
            self._pending = (x, pending[1], left) if left else None
            return pending[1][i]
        self.fused.observe = any(m.observe for m in self.members)
        outputs = self.fused(x).split(self.sizes, dim=-1)
        self._pending = (x, outputs, len(self.members) - 1)
        return outputs[i]


def compatible(a: QuantLinear, b: QuantLinear) -> bool:
    """Whether two ops compute with the same numerics, so that one GEMM can serve both."""
    if type(a) is not QuantLinear or type(b) is not QuantLinear:  # MixedLinear splits channels by format
        return False
    same = (a.in_features == b.in_features and a.weight_format == b.weight_format
            and a.activation_format == b.activation_format and a.weight_strategy == b.weight_strategy
            and a.group_size == b.group_size and a.act_dynamic == b.act_dynamic
            and (a.bias is None) == (b.bias is None) and not a.is_lm_head and not b.is_lm_head)
    if not same:
        return False
    for name in _ROW_BUFFERS:
        ta, tb = getattr(a, name, None), getattr(b, name, None)
        if (ta is None) != (tb is None) or (ta is not None and (ta.dtype != tb.dtype or ta.device != tb.device
                                                               or ta.shape[1:] != tb.shape[1:])):
            return False
    sa, sb = getattr(a, "input_scale", None), getattr(b, "input_scale", None)
    return (sa is None) == (sb is None) and (sa is None or torch.equal(sa, sb))


def fuse_siblings(model: nn.Module) -> list[list[str]]:
    """Fuses every group of sibling ops (runtime.models.sibling_groups) whose members are compatible; returns
    the names of each group fused. Run it once the model is on its device: moving it afterwards would copy the
    members' views apart from the group's tensors."""
    fused = []
    for names in sibling_groups(model):
        members = [model.get_submodule(n) for n in names]
        if all(getattr(m, "siblings", None) is None for m in members) and all(
                compatible(members[0], m) for m in members[1:]):
            FusedSiblings(members)
            fused.append(names)
    return fused
