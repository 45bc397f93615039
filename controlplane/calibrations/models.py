"""Calibrations: statistics of a corpus run through a model under a recipe; stored on disk, indexed here."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db import Base, JSONType, UTCDateTime, utcnow


class Calibration(Base):
    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(80), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    recipe_id: Mapped[int] = mapped_column(ForeignKey("recipes.id"), index=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id"), index=True)
    stats_uri: Mapped[str] = mapped_column(Text)
    samples: Mapped[int]
    seq_len: Mapped[int]
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
