"""Evaluations: an engine against its reference precision on a corpus, with gate results and a verdict."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Text
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db import Base, JSONType, UTCDateTime, str_enum, utcnow


class Verdict(str, enum.Enum):
    passed = "passed"
    failed = "failed"


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    engine_id: Mapped[int] = mapped_column(ForeignKey("engines.id"), index=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id"), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)  # overall: kl_mean, top1_agreement, ppl_delta...
    by_slice: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    by_bucket: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    gates: Mapped[list[Any]] = mapped_column(JSONType, default=list)  # one result per gate
    verdict: Mapped[Verdict] = mapped_column(str_enum(Verdict, "verdict"), index=True)
    report_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
