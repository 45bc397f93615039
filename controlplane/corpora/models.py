"""Corpora: the JSONL lives content-addressed under the artifact root; the row holds its profile."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db import Base, JSONType, UTCDateTime, utcnow


class Corpus(Base):
    __tablename__ = "corpora"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    content_hash: Mapped[str] = mapped_column(String(80), index=True)
    uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sample_count: Mapped[int]
    coverage: Mapped[dict[str, Any]] = mapped_column(JSONType)  # runtime.corpora.CoverageProfile
    tokenizer_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
