"""A calibration: statistics per tensor and per KV head, the scales they give, saved as JSON."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.calibration.errors import CalibrationError
from runtime.calibration.observers import AMAX_FLOOR
from runtime.calibration.statistics import KVStats, TensorStats
from runtime.errors import InputError

FILENAME = "calibration.json"
FORMAT_VERSION = 1


class CalibrationMeta(BaseModel):
    """Where a calibration came from."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    corpus_name: str
    corpus_hash: str = Field(description="content hash of the corpus the samples came from")
    samples: int = Field(description="samples actually run (at most the requested number)")
    seq_len: int = Field(description="tokens each sample was truncated to")
    tokens: int = Field(description="tokens run in total")
    observer: str
    observer_kwargs: dict[str, float | str] = Field(default_factory=dict)
    model_hash: str | None = None


class Calibration(BaseModel):
    """Statistics keyed by module name (linear inputs) and attention layer name (KV heads)."""

    model_config = ConfigDict(extra="forbid")

    meta: CalibrationMeta
    tensors: dict[str, TensorStats] = Field(description="linear/Conv1D input statistics by module name")
    kv_heads: dict[str, KVStats] = Field(default_factory=dict, description="K/V amax per head by attention name")

    @property
    def kv(self) -> dict[str, list[float]]:
        """Per-head amax over keys and values, by attention layer name."""
        return {layer: [max(k, v) for k, v in zip(s.k_amax, s.v_amax)] for layer, s in self.kv_heads.items()}

    @property
    def metadata(self) -> dict:
        """The metadata as a plain dict (corpus_hash, samples, seq_len, observer, model_hash, ...)."""
        return self.meta.model_dump(mode="json")

    @property
    def content_hash(self) -> str:
        """"sha256:<hex>" over the canonical JSON of the calibration."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def activation_scale(self, name: str, fmax: float) -> float:
        """Static per-tensor scale for module `name`'s input: observer amax / fmax (never 0)."""
        stats = self.tensors.get(name)
        if stats is None:
            raise CalibrationError(
                f"no calibration statistics for module {name!r}; this calibration covers {len(self.tensors)} "
                f"modules ({_preview(self.tensors)})", loc=("tensors", name), type="missing_calibration")
        return max(stats.observer_amax, AMAX_FLOOR) / _check_fmax(fmax)

    def scales(self, fmax: float) -> dict[str, float]:
        """activation_scale for every calibrated module."""
        return {name: self.activation_scale(name, fmax) for name in self.tensors}

    def kv_scales(self, layer: str, fmax: float) -> tuple[list[float], list[float]]:
        """(key scales, value scales) per KV head of attention `layer`: amax / fmax, never 0."""
        stats = self.kv_heads.get(layer)
        if stats is None:
            raise CalibrationError(
                f"no KV-cache statistics for attention layer {layer!r}; this calibration covers "
                f"{len(self.kv_heads)} layers ({_preview(self.kv_heads)})", loc=("kv", layer), type="missing_calibration")
        fmax = _check_fmax(fmax)
        return [max(a, AMAX_FLOOR) / fmax for a in stats.k_amax], [max(a, AMAX_FLOOR) / fmax for a in stats.v_amax]

    def save(self, directory: str | Path) -> Path:
        """Writes <directory>/calibration.json (temporary name, then rename); returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{FILENAME}.{os.getpid()}.tmp"
        tmp.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        tmp.replace(directory / FILENAME)
        return directory

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Reads a calibration saved by `save` (give the directory or the JSON file)."""
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CalibrationError(f"no calibration at {str(file)!r}", loc=("path",)) from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise InputError.from_pydantic(exc, prefix=("calibration",)) from None


def _check_fmax(fmax: float) -> float:
    if not (isinstance(fmax, (int, float)) and math.isfinite(fmax) and fmax > 0):
        raise InputError(f"fmax must be a finite positive number, got {fmax!r}", loc=("fmax",))
    return float(fmax)


def _preview(names, n: int = 3) -> str:
    names = list(names)
    if not names:
        return "none"
    head = ", ".join(names[:n])
    return f"e.g. {head}" + (f" and {len(names) - n} more" if len(names) > n else "")
