"""MixedLinear: one linear op whose output features run in different formats (MixLLM-style).

Each output feature j is y[:, j] = x . W[j, :], independent of every other row, so a layer whose
rows take different formats is exact as a set of smaller GEMMs, one per format, each over its
rows, scattered into one output. Nothing is approximated by the split: the mixed layer equals
the composition of its parts on any input.
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.modules.quant_linear import ActivationStats, QuantLinear
from runtime.plans import OpPlan

MAX_PARTS = 255


def row_index_dtype(out_features: int) -> torch.dtype:
    """Dtype of the stored row indices of a mixed op's parts: int16 while the rows fit, else int32."""
    return torch.int16 if out_features <= torch.iinfo(torch.int16).max else torch.int32


class ChannelPart(QuantLinear):
    """The rows of a mixed layer that share one format; not an op of its own, so inventories skip it."""

    is_quantized_linear = False


class MixedLinear(nn.Module):
    """y = x W^T + b where each part holds the rows of W (and of b) that share one format.

    Buffers (what the engine's safetensors hold): `rows_<i>` for parts i >= 1, the ascending
    output features part i owns (int16, or int32 past 32767 rows); part 0 owns the rest, so a
    layer that moves a few rows out of its main format pays two bytes per moved row and nothing
    for the others. Under `parts.<i>.` each part's QuantLinear buffers over its rows.
    """

    is_quantized_linear = True

    def __init__(self, in_features: int, out_features: int, parts: list[ChannelPart], rows: list[torch.Tensor],
                 *, is_lm_head: bool = False, kernel: str = ""):
        super().__init__()
        if not 1 <= len(parts) <= MAX_PARTS:
            raise ValueError(f"a mixed layer has 1..{MAX_PARTS} parts, got {len(parts)}")
        if len(rows) != len(parts) - 1:
            raise ValueError(f"{len(parts)} parts need row indices for parts 1..{len(parts) - 1}, got {len(rows)}")
        self.in_features, self.out_features = in_features, out_features
        self.is_lm_head, self.kernel = is_lm_head, kernel
        self.parts = nn.ModuleList(parts)
        owner = torch.zeros(out_features, dtype=torch.long)
        for i, r in enumerate(rows, start=1):
            r = r.long()
            if r.numel() and (int(r.min()) < 0 or int(r.max()) >= out_features or bool((owner[r] != 0).any())):
                raise ValueError(f"rows of part {i} are out of range or owned by another part")
            owner[r] = i
            self.register_buffer(f"rows_{i}", r.to(row_index_dtype(out_features)))
        for i, part in enumerate(parts):
            index = (owner == i).nonzero().squeeze(1)
            if index.numel() != part.out_features:
                raise ValueError(f"part {i} has {part.out_features} rows but owns {index.numel()} output features")
            # int64 copies for index_copy_; derived, so not saved.
            self.register_buffer(f"index_{i}", index, persistent=False)
        self.bias = None  # each part carries the bias of its rows
        self.activation_stats = ActivationStats()
        # The first part that quantizes activations counts saturation for the whole op; parts that
        # quantize the same input again would count every clipped value twice.
        # (An index, not the module: a module attribute would register the part a second time.)
        self._reporter = next((i for i, p in enumerate(parts) if p.activation_format in ("fp8_e4m3", "int8")), None)
        if self._reporter is not None:
            parts[self._reporter].activation_stats = self.activation_stats
        self._observe = False

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, op: OpPlan,
                   input_scales: list[float | None] | None = None) -> "MixedLinear":
        """Quantizes each part's rows of an [out, in] float weight by the part's plan.

        Args:
            weight: [out, in] float weight of the whole op.
            bias: [out] or None.
            op: a mixed OpPlan (`op.parts` non-empty; each part's `channels` are its rows).
            input_scales: per part, the calibrated input scale for static activations, else None.
        """
        if not op.parts:
            raise ValueError(f"{op.name}: not a mixed op (its plan has no parts)")
        if len(op.parts) > MAX_PARTS:
            raise ValueError(f"{op.name}: at most {MAX_PARTS} parts, got {len(op.parts)}")
        covered = sorted(c for p in op.parts for c in p.channels)
        if covered != list(range(op.out_features)):
            missing = sorted(set(range(op.out_features)) - set(covered))
            raise ValueError(f"{op.name}: every output feature must belong to exactly one part "
                             f"(unowned: {missing[:5]}, {len(covered)} claims for {op.out_features} rows)")
        scales = input_scales or [None] * len(op.parts)
        parts = []
        for part, scale in zip(op.parts, scales):
            rows = torch.tensor(part.channels, dtype=torch.long)
            parts.append(ChannelPart.from_float(weight[rows], None if bias is None else bias[rows], part, scale))
        rows = [torch.tensor(p.channels, dtype=torch.long) for p in op.parts[1:]]
        return cls(op.in_features, op.out_features, parts, rows, is_lm_head=op.op_kind == "lm_head",
                   kernel=op.kernel)

    @classmethod
    def empty_like_state(cls, op: OpPlan, state: dict[str, torch.Tensor], prefix: str) -> "MixedLinear":
        """An instance whose buffers are taken from an engine's saved tensors (no requantization)."""
        parts = [ChannelPart.empty_like_state(p, state, f"{prefix}parts.{i}.") for i, p in enumerate(op.parts)]
        rows = [state[f"{prefix}rows_{i}"] for i in range(1, len(op.parts))]
        return cls(op.in_features, op.out_features, parts, rows, is_lm_head=op.op_kind == "lm_head",
                   kernel=op.kernel)

    # --- execution -----------------------------------------------------------------------------
    def indices(self) -> list[torch.Tensor]:
        """Output features of each part, ascending."""
        return [getattr(self, f"index_{i}") for i in range(len(self.parts))]

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight values this op multiplies by, as a dense [out, in] tensor."""
        w = torch.empty(self.out_features, self.in_features, dtype=dtype, device=self.index_0.device)
        for part, index in zip(self.parts, self.indices()):
            w[index] = part.dequantized_weight(dtype)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._observe and self._reporter is None:
            self.activation_stats.update(float(x2.abs().amax()) if x2.numel() else 0.0, 0, x2.numel())
        y = x2.new_empty(x2.shape[0], self.out_features)
        # One GEMM per format over its rows; each writes its columns of the one output.
        for part, index in zip(self.parts, self.indices()):
            y.index_copy_(1, index, part(x2))
        return y.reshape(*shape[:-1], self.out_features)

    @property
    def observe(self) -> bool:
        return self._observe

    @observe.setter
    def observe(self, value: bool) -> None:
        # Serving flips this while a shadow canary runs; only the reporting part needs to look.
        self._observe = bool(value)
        for i, part in enumerate(self.parts):
            part.observe = bool(value) and i == self._reporter

    def extra_repr(self) -> str:
        counts = ", ".join(f"{p.weight_format}{'/g' + str(p.group_size) if p.group_size else ''}"
                           f"xA={p.activation_format}: {p.out_features}" for p in self.parts)
        return f"in={self.in_features}, out={self.out_features}, rows by format: {counts}"

