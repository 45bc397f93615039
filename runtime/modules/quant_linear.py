"""QuantLinear: a linear op in the formats its plan gives, calling a kernel or its reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.act_quant import act_quant, act_quant_reference
from kernels.gemm_fp8 import gemm_fp8
from kernels.gemm_int8 import gemm_int8
from kernels.gemm_w4a16 import (GROUP_MAJOR_PATHS, dequantize_w4_reference, gemm_w4a16, quantize_w4_reference,
                                 silu_mul, w4a16_path)
from kernels.ops import gemm_w4a16_op, gemm_w8a8_op
from runtime.formats import WIDE_FORMATS, get_format, quantize
from runtime.plans import OpPlan
from runtime.recipes import QuantArgs, Strategy

# Scales of int4 weights are stored in bf16, the dtype the W4A16 kernel reads on the GPU.
INT4_SCALE_DTYPE = torch.bfloat16


class ActivationStats:
    """What the last forward passes saw at one op's input: the shadow canary reads it."""

    __slots__ = ("amax", "n_saturated", "numel", "calls")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.amax, self.n_saturated, self.numel, self.calls = 0.0, 0, 0, 0

    def update(self, amax: float, n_saturated: int, numel: int) -> None:
        self.amax = max(self.amax, amax)
        self.n_saturated += n_saturated
        self.numel += numel
        self.calls += 1

    @property
    def saturation(self) -> float:
        """Share of input values clipped at the format's max."""
        return self.n_saturated / self.numel if self.numel else 0.0


class QuantLinear(nn.Module):
    """y = x W^T + b with W (and optionally x) in low precision and fp32 accumulation.

    Buffers (what the engine's safetensors hold): `weight` in its storage dtype ([out, in]; for int4
    `weight_packed` [out, in // 2]), `weight_scale`, `weight_zero` (int4), `input_scale` (static
    activations), `bias`. Not saved: `weight_scale_gm` and `weight_zero_gm`, group-major copies of an
    int4 op's scales and zeros (:meth:`keep_group_major_scales`).
    """

    is_quantized_linear = True
    # Set by runtime.modules.fused_linear when this op runs as part of one GEMM with its siblings.
    siblings = None
    sibling_index = 0
    # Every int4 zero an integer in 0..15, checked once (:meth:`check_integer_zeros`): the mma
    # kernel then subtracts zeros from the codes exactly (kernels.gemm_w4a16, integer_zeros).
    integer_zeros = False

    def __init__(self, in_features: int, out_features: int, *, weight_format: str, activation_format: str,
                 weight_strategy: str = "channel", group_size: int | None = None, act_dynamic: bool = True,
                 is_lm_head: bool = False, kernel: str = ""):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_format, self.activation_format = weight_format, activation_format
        self.weight_strategy, self.group_size = weight_strategy, group_size
        self.act_dynamic, self.is_lm_head, self.kernel = act_dynamic, is_lm_head, kernel
        self.activation_stats = ActivationStats()
        self.observe = False  # set by serving while a shadow canary runs

    # --- construction from a float op ------------------------------------------------
    @classmethod
    def _for_op(cls, op: OpPlan) -> "QuantLinear":
        """An instance configured by the op's plan, with no tensors yet."""
        w_args, a_args = op.weight_args, op.activation_args
        return cls(op.in_features, op.out_features, weight_format=op.weight, activation_format=op.activation,
                   weight_strategy=w_args.strategy.value if w_args else "tensor",
                   group_size=w_args.group_size if w_args else None,
                   act_dynamic=a_args.dynamic if a_args else True,
                   is_lm_head=op.op_kind == "lm_head", kernel=op.kernel)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, op: OpPlan,
                   input_scale: float | None = None) -> "QuantLinear":
        """Quantizes an [out, in] float weight by the op's plan."""
        w_args: QuantArgs | None = op.weight_args
        a_args: QuantArgs | None = op.activation_args
        q = cls._for_op(op)
        w = weight.detach().float()
        if op.weight in WIDE_FORMATS:
            q.register_buffer("weight", w.to(get_format(op.weight).storage_dtype))
        elif op.weight == "int4":
            packed, scales, zeros = quantize_w4_reference(w.to(INT4_SCALE_DTYPE), w_args.group_size, w_args.symmetric)
            q.register_buffer("weight_packed", packed)
            q.register_buffer("weight_scale", scales)
            q.register_buffer("weight_zero", zeros)
        else:
            qt = quantize(w, op.weight, w_args.granularity(), with_stats=False)
            q.register_buffer("weight", qt.data)
            q.register_buffer("weight_scale", qt.scale.reshape(qt.scale.shape[0], -1) if w_args.strategy == Strategy.group
                              else qt.scale.expand(w.shape[0], 1).contiguous())
        if bias is not None:
            q.register_buffer("bias", bias.detach().float().clone())
        else:
            q.bias = None
        if a_args is not None and not a_args.dynamic:
            if input_scale is None:
                raise ValueError(f"{op.name}: static {op.activation} activations need a calibrated input scale")
            q.register_buffer("input_scale", torch.tensor([[float(input_scale)]], dtype=torch.float32))
        return q

    @classmethod
    def empty_like_state(cls, op: OpPlan, state: dict[str, torch.Tensor], prefix: str) -> "QuantLinear":
        """An instance whose buffers are taken from an engine's saved tensors (no requantization)."""
        q = cls._for_op(op)
        for name in ("weight", "weight_packed", "weight_scale", "weight_zero", "input_scale", "bias"):
            if f"{prefix}{name}" in state:
                q.register_buffer(name, state[f"{prefix}{name}"])
        if "bias" not in q._buffers:
            q.bias = None
        return q

    def keep_group_major_scales(self) -> None:
        """Keeps [groups, out] copies of an int4 op's scales and zeros for the calls the W4A16
        tensor-core and mma kernels serve (2..128 tokens; kernels.gemm_w4a16.GROUP_MAJOR_PATHS): a
        step reads a block of rows' scales of one group, side by side in this layout and 32-byte
        sectors apart in the stored one. On the H100 that ran 2-10% faster for the tensor-core
        kernel (bench/results/w4a16-tc-scale-layout-h100.json) and 3-6% for the mma kernel, for 4
        more bytes a group (6% of the packed weights at group 128). The one-token GEMV reads a
        row's groups and keeps the stored layout."""
        if self.weight_format != "int4":
            return
        self.register_buffer("weight_scale_gm", self.weight_scale.t().contiguous(), persistent=False)
        self.register_buffer("weight_zero_gm", self.weight_zero.t().contiguous(), persistent=False)

    def check_integer_zeros(self) -> bool:
        """Whether every zero point of an int4 op is an integer in 0..15 (runtime quantization rounds
        them; an imported engine's need not), remembered for the kernels. One device sync."""
        z = getattr(self, "weight_zero", None)
        self.integer_zeros = bool(self.weight_format == "int4" and z is not None
                                  and ((z == z.round()) & (z >= 0) & (z <= 15)).all())
        return self.integer_zeros

    def _w4_scales(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _w4_scale_dtype(x2)
        if (getattr(self, "weight_scale_gm", None) is not None
                and w4a16_path(x2.shape[0], self.group_size, self.weight_packed.shape[0], x2.shape[1],
                               x2.dtype) in GROUP_MAJOR_PATHS):
            # [out, groups] views of the group-major copies; .to keeps their strides.
            return self.weight_scale_gm.t().to(dtype), self.weight_zero_gm.t().to(dtype)
        return self.weight_scale.to(dtype), self.weight_zero.to(dtype)

    # --- execution -----------------------------------------------------------------------
    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight values this op multiplies by, as a dense [out, in] tensor."""
        if self.weight_format in WIDE_FORMATS:
            return self.weight.to(dtype)
        if self.weight_format == "int4":
            return dequantize_w4_reference(self.weight_packed, self.weight_scale, self.weight_zero,
                                           self.group_size).to(dtype)
        w = self.weight.float()
        if self.weight_strategy == "group":
            w = (w.reshape(self.out_features, -1, self.group_size) * self.weight_scale[..., None]).reshape_as(w)
        else:
            w = w * self.weight_scale
        return w.to(dtype)

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """``gated``: the rows stack a gated MLP's gate over its up projection; returns silu(gate) * up
        (runtime.modules.gated_mlp), in the int4 GEMM itself where it can."""
        if self.siblings is not None:
            return self.siblings.output(self, x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        # Under torch.compile the GEMM kernels are called as custom ops (kernels/ops.py), opaque to
        # the compiler, which fuses the element-wise work around them. Activation quantization is
        # given to it as torch ops instead: fused into the norm or product before it, it costs no
        # launch of its own (on the H100 the 14 act_quant launches of a 2-layer step took 24 µs).
        compiling = torch.compiler.is_compiling()
        if self.activation_format in ("fp8_e4m3", "int8"):
            scale = None if self.act_dynamic else self.input_scale
            quantize_act = act_quant_reference if compiling else act_quant
            xq, xs, amax, n_sat = quantize_act(x2, self.activation_format, scale)
            if self.observe:
                self.activation_stats.update(float(amax.max()) if amax.numel() else 0.0, int(n_sat), x2.numel())
            if self.weight_strategy == "group":  # block-scaled weights: no fused kernel, dequantize both sides
                y = F.linear((xq.float() * xs).to(x.dtype), self.dequantized_weight(x.dtype), bias)
            else:
                if compiling:
                    y = gemm_w8a8_op(xq, xs, self.weight, self.weight_scale, bias, x.dtype)
                else:
                    gemm = gemm_fp8 if self.activation_format == "fp8_e4m3" else gemm_int8
                    y = gemm(xq, xs, self.weight, self.weight_scale, bias, out_dtype=x.dtype)
        else:
            if self.observe:
                self.activation_stats.update(float(x2.abs().amax()) if x2.numel() else 0.0, 0, x2.numel())
            if self.weight_format == "int4":
                gemm = gemm_w4a16_op if compiling else gemm_w4a16
                y = gemm(x2, self.weight_packed, *self._w4_scales(x2), self.group_size, bias, gated=gated,
                         integer_zeros=self.integer_zeros)
                gated = False  # done in the GEMM
            else:
                y = F.linear(x2, self.dequantized_weight(x.dtype), bias)
        if gated:
            y = silu_mul(y)
        return y.reshape(*shape[:-1], y.shape[-1])

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, W={self.weight_format}"
                f"{'/g' + str(self.group_size) if self.group_size else ''}, A={self.activation_format}, "
                f"kernel={self.kernel}")


def _w4_scale_dtype(x: torch.Tensor) -> torch.dtype:
    # The reference upcasts anyway; on the GPU the kernel wants scales in the activation dtype.
    return x.dtype if x.is_cuda else INT4_SCALE_DTYPE


def prepare_w4a16(model: nn.Module) -> int:
    """:meth:`QuantLinear.keep_group_major_scales` and :meth:`QuantLinear.check_integer_zeros` for
    every int4 GEMM ``model`` runs: each op, or the one its fused siblings run as
    (runtime.modules.fused_linear). Returns how many."""
    done: dict[int, QuantLinear] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.weight_format == "int4":
            gemm = module.siblings.fused if module.siblings is not None else module
            if id(gemm) not in done:
                gemm.keep_group_major_scales()
                gemm.check_integer_zeros()
                done[id(gemm)] = gemm
    return len(done)
