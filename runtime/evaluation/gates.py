"""Gates: thresholds on evaluation metrics, overall or per slice / length bucket, that pass or fail."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.errors import InputError
from runtime.evaluation.metrics import Metrics

# Metrics a gate may name: every float of Metrics, plus the worst layer's SQNR (overall only).
TOKEN_METRICS = tuple(name for name, f in Metrics.model_fields.items()
                      if name not in ("samples", "tokens", "nonfinite_tokens"))
REPORT_METRICS = ("sqnr_min_db",)
GATE_METRICS = TOKEN_METRICS + REPORT_METRICS


class Gate(BaseModel):
    """Pass when `metric` (overall, or on `slice` / `bucket`) is <= max, or >= min."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description=f"one of {', '.join(GATE_METRICS)}")
    max: float | None = Field(None, description="the metric must not exceed this")
    min: float | None = Field(None, description="the metric must be at least this")
    slice: str | None = Field(None, description="a corpus slice; None for the whole run")
    bucket: str | None = Field(None, description="a sequence-length bucket such as '128-512'")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in GATE_METRICS:
            raise ValueError(f"unknown metric {metric!r}; gate one of {', '.join(GATE_METRICS)}")
        return metric

    @model_validator(mode="after")
    def _one_threshold(self) -> "Gate":
        if (self.max is None) == (self.min is None):
            raise ValueError("set exactly one of `max` or `min`")
        threshold = self.max if self.max is not None else self.min
        if not math.isfinite(threshold):
            raise ValueError("the threshold must be a finite number")
        if self.slice is not None and self.bucket is not None:
            raise ValueError("gate a slice or a length bucket, not both")
        if self.metric in REPORT_METRICS and (self.slice is not None or self.bucket is not None):
            raise ValueError(f"{self.metric} is measured over the whole run; drop `slice` and `bucket`")
        return self

    @property
    def kind(self) -> Literal["max", "min"]:
        return "max" if self.max is not None else "min"

    @property
    def threshold(self) -> float:
        return self.max if self.max is not None else self.min

    @property
    def scope(self) -> str:
        if self.slice is not None:
            return f"slice {self.slice!r}"
        if self.bucket is not None:
            return f"length bucket {self.bucket!r}"
        return "all samples"


class GateResult(BaseModel):
    """One gate checked against a report."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    slice: str | None
    bucket: str | None
    kind: Literal["max", "min"]
    threshold: float
    value: float | None = Field(description="None when the metric or its slice was not measured")
    passed: bool
    message: str


class _Report(Protocol):
    def metric(self, name: str, *, slice: str | None = None, bucket: str | None = None) -> float | None: ...
    def has_group(self, *, slice: str | None = None, bucket: str | None = None) -> bool: ...


def apply_gates(report: _Report, gates: Iterable[Gate | dict]) -> list[GateResult]:
    """Checks each gate; a gate whose slice or metric is missing fails rather than passing."""
    return [_check(report, gate) for gate in parse_gates(gates)]


def parse_gates(gates: Iterable[Gate | dict]) -> list[Gate]:
    """Gates from Gate objects or plain dicts; a bad one is an InputError at ("gates", index, field)."""
    parsed = []
    for i, gate in enumerate(gates):
        try:
            parsed.append(gate if isinstance(gate, Gate) else Gate.model_validate(gate))
        except ValidationError as exc:
            raise InputError.from_pydantic(exc, prefix=("gates", i)) from None
    return parsed


def _check(report: _Report, gate: Gate) -> GateResult:
    where = gate.scope
    if not report.has_group(slice=gate.slice, bucket=gate.bucket):
        value, passed = None, False
        message = f"{gate.metric}: {where} has no samples in this evaluation, so the gate cannot pass"
    else:
        value = report.metric(gate.metric, slice=gate.slice, bucket=gate.bucket)
        if value is None or math.isnan(value):
            value, passed = None, False
            message = (f"{gate.metric} on {where} could not be measured (no scored tokens, or NaN/inf logits); "
                       "the gate fails")
        elif gate.kind == "max":
            passed = value <= gate.threshold
            message = (f"{gate.metric} = {value:.4g} on {where} "
                       + (f"is within max {gate.threshold:g}" if passed else f"exceeds max {gate.threshold:g}"))
        else:
            passed = value >= gate.threshold
            message = (f"{gate.metric} = {value:.4g} on {where} "
                       + (f"meets min {gate.threshold:g}" if passed else f"is below min {gate.threshold:g}"))
    return GateResult(metric=gate.metric, slice=gate.slice, bucket=gate.bucket, kind=gate.kind,
                      threshold=gate.threshold, value=value, passed=passed, message=message)
