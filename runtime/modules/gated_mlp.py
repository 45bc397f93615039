"""A gated MLP whose gate and up projections run as one GEMM takes silu(gate) * up from that GEMM.

transformers' Llama-family MLPs compute ``down(silu(gate(x)) * up(x))``. Fused siblings
(runtime.modules.fused_linear) make gate and up one GEMM, and silu and the product stay an
element-wise launch of their own between it and down: at decode a few µs a layer of launch and
latency for ~100 KB of work. The W4A16 GEMV computes them as it stores (kernels.gemm_w4a16,
``gated=True``), from its fp32 sums, so an int4 MLP is two launches. Like the sibling fusion,
this is an execution detail: the module tree, the plan and each op's statistics are unchanged.

An MLP is rewired only where its gate and up are one fused int4 group, its activation is SiLU,
and its rewired output matches its own forward on a random input. Hooks on gate or up (per-op
evaluation captures their outputs) get what they expect: while any is registered the MLP calls
the two as before.
"""
from __future__ import annotations

import types

import torch
from torch import nn

from runtime.modules.quant_linear import QuantLinear

# The rewired output against the MLP's own on one random input: the fused path rounds once where
# the separate one rounds gate, up and their product to the activation dtype (2**-8 each in bf16).
MATCH_REL_ERR = 2e-2


def _gated_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj, self.up_proj
    if gate._forward_hooks or up._forward_hooks or gate._forward_pre_hooks or up._forward_pre_hooks:
        return type(self).forward(self, x)
    return self.down_proj(gate.siblings.gated(x))


def _is_silu(act) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _candidate(module: nn.Module) -> bool:
    gate, up, down = (getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    if not all(isinstance(m, QuantLinear) for m in (gate, up, down)) or not _is_silu(getattr(module, "act_fn", None)):
        return False
    group = gate.siblings
    return (group is not None and group.members == [gate, up] and gate.weight_format == "int4"
            and gate.activation_format not in ("fp8_e4m3", "int8"))


@torch.no_grad()
def _matches(module: nn.Module, rewired, dtype: torch.dtype) -> bool:
    gate = module.gate_proj
    device = gate.weight_packed.device
    # Its own generator: loading an engine leaves the caller's random state as it was.
    x = torch.randn(1, gate.in_features, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    want = type(module).forward(module, x).float()
    got = rewired(x).float()
    return got.shape == want.shape and bool(
        torch.linalg.vector_norm(got - want) <= MATCH_REL_ERR * torch.linalg.vector_norm(want))


def fuse_gated_mlps(model: nn.Module) -> list[str]:
    """Rewires every gated MLP that qualifies (see the module's doc); returns their names. Run it after
    :func:`runtime.modules.fused_linear.fuse_siblings`, on the model's device."""
    dtype = next(model.parameters()).dtype  # the embeddings': the activations'
    done = []
    for name, module in model.named_modules():
        if "forward" in module.__dict__ or not _candidate(module):
            continue
        rewired = types.MethodType(_gated_forward, module)
        if _matches(module, rewired, dtype):
            module.forward = rewired
            done.append(name)
    return done
