"""Engines and reference models as serving holds them: each behind a lock that its forward passes take.

A forward pass is not thread-safe while the shadow worker toggles `observe` on an engine's
QuantLinears, so every forward (a prefill, one decode step, or a teacher-forced shadow pass)
holds the model's lock; concurrent requests interleave step by step.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from runtime.engines import LoadedEngine, load_engine
from runtime.errors import InputError
from runtime.formats import WIDE_FORMATS
from runtime.models import LoadedModel, load_model
from runtime.modules import KVCacheQuant, QuantLinear

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    """What one observed forward saw at a quantized op's input."""

    amax: float | None  # None where the op does not record one (KV-cache quantizers)
    n_saturated: int
    numel: int


@dataclass(eq=False)
class ServedEngine:
    """A loaded engine with its lock, the ops the shadow canary observes and its calibrated ranges."""

    loaded: LoadedEngine
    path: Path
    registry_id: int | None = None  # the control plane's engine id
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        model = self.loaded.model
        self.quant_ops: dict[str, QuantLinear] = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
        # Saturation is reported for ops whose inputs are quantized; amax ratios wherever a calibration gave a range.
        self.quantized_inputs = {n for n, m in self.quant_ops.items() if m.activation_format not in WIDE_FORMATS}
        # Dynamic KV scales never clip; static ones (from calibration) do when traffic leaves the calibrated range.
        self.kv_ops: dict[str, KVCacheQuant] = {f"{n[: -len('.kv_quant')]}.kv_cache": m
                                                for n, m in model.named_modules()
                                                if isinstance(m, KVCacheQuant) and not m.dynamic}
        self.calibrated_amax: dict[str, float] = {n: float(a) for n, a in
                                                  (self.loaded.manifest.get("calibrated_amax") or {}).items()
                                                  if a and float(a) > 0.0}
        config = model.config
        self.max_positions = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions"))
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, *, registry_id: int | None = None, device: str = "cpu",
             fuse: bool | None = None) -> "ServedEngine":
        """Loads an engine folder for serving (`fuse`: see runtime.engines.load_engine)."""
        return cls(load_engine(path, device=device, fuse=fuse), Path(path), registry_id)

    @property
    def engine_id(self) -> str:
        return self.loaded.engine_id

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def reference_path(self) -> str:
        """The folder of the model this engine was built from (its reference precision)."""
        return self.loaded.manifest["model"]["path"]

    def step(self, input_ids: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
        """One cached forward: logits of the last position [vocab] (fp32) and the updated cache."""
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=input_ids.to(self.device), past_key_values=cache, use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    def observed_forward(self, token_ids: list[int]) -> tuple[torch.Tensor, dict[str, LayerStats]]:
        """Teacher-forced logits [T, vocab] (fp32) with what every quantized op's input held.

        KV-cache quantizers count saturation always; their share is the difference across this pass.
        """
        ids = torch.tensor([token_ids], device=self.device)
        with self.lock, torch.inference_mode():
            kv_before = {n: (m.n_saturated, m.numel) for n, m in self.kv_ops.items()}
            for op in self.quant_ops.values():
                op.activation_stats.reset()
                op.observe = True
            try:
                logits = self.model(input_ids=ids, use_cache=False).logits[0].float()
            finally:
                for op in self.quant_ops.values():
                    op.observe = False
            stats = {n: LayerStats(op.activation_stats.amax, op.activation_stats.n_saturated,
                                   op.activation_stats.numel) for n, op in self.quant_ops.items()}
            for n, m in self.kv_ops.items():
                sat0, num0 = kv_before[n]
                stats[n] = LayerStats(None, m.n_saturated - sat0, m.numel - num0)
        return logits, stats


@dataclass(eq=False)
class ReferenceModel:
    """The model an engine was built from, in its own (wide) precision, for teacher-forced comparisons."""

    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Teacher-forced logits [T, vocab] in fp32."""
        model = self.loaded.model
        ids = torch.tensor([token_ids], device=next(model.parameters()).device)
        with self.lock, torch.inference_mode():
            return model(input_ids=ids, use_cache=False).logits[0].float()


class ReferencePool:
    """Reference models by folder, loaded once and shared by every engine built from the same model."""

    def __init__(self, *, device: str = "cpu", override: str | Path | None = None):
        self.device, self.override = device, override
        self._models: dict[str, ReferenceModel] = {}
        self._lock = threading.Lock()

    def path_for(self, engine: ServedEngine) -> str:
        return str(self.override or engine.reference_path)

    def get(self, engine: ServedEngine) -> ReferenceModel:
        """The reference of `engine`, loading it on first use (fp32: higher precision than any engine format)."""
        path = self.path_for(engine)
        with self._lock:
            ref = self._models.get(path)
            if ref is None:
                if not Path(path).is_dir():
                    raise InputError(f"reference model of engine {engine.engine_id} not found at {path!r}; "
                                     "pass the folder with --reference", loc=("reference_path",))
                loaded = load_model(path, dtype=torch.float32)
                loaded.model.to(self.device)
                ref = self._models[path] = ReferenceModel(loaded)
                log.info("loaded reference model %s for engine %s", path, engine.engine_id)
            return ref

    def retain(self, engines: list[ServedEngine]) -> None:
        """Releases references no listed engine needs (a shadow job in flight keeps its own handle)."""
        keep = {self.path_for(e) for e in engines}
        with self._lock:
            for path in [p for p in self._models if p not in keep]:
                del self._models[path]
