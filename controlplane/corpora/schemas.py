"""Corpus schemas."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from controlplane.fields import Id, Text
from controlplane.pagination import Page


class CorpusPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    content_hash: str
    uri: str
    size_bytes: int
    sample_count: int
    coverage: dict[str, Any]
    tokenizer_model_id: int
    description: str | None
    created_at: datetime
    created_by: str


class CorporaPublic(Page[CorpusPublic]):
    pass


class CorpusFilters(BaseModel):
    name: Text | None = None
    content_hash: Text | None = None
    tokenizer_model_id: Id | None = None
