"""Accelerator and compatibility-matrix schemas."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from controlplane.accelerators.models import Support
from controlplane.fields import Text
from controlplane.pagination import Page


class AcceleratorPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    min_capability: int | None
    reference_only: bool
    updated_at: datetime


class AcceleratorsPublic(Page[AcceleratorPublic]):
    pass


class AcceleratorFilters(BaseModel):
    name: Text | None = None


class CompatibilityEntryPublic(BaseModel):
    accelerator: str
    format: str
    op_kind: str
    support: Support
    kernel: str | None
    reason: str


class CompatibilityMatrixPublic(Page[CompatibilityEntryPublic]):
    pass


class CompatibilityFilters(BaseModel):
    accelerator: Text | None = None
    format: Text | None = None
    op_kind: Text | None = None
    support: Support | None = None


class SyncResult(BaseModel):
    accelerators: int
    entries: int
