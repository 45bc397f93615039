"""Accelerator profiles and their compatibility matrix (accelerator x format x op kind)."""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controlplane.db import Base, UTCDateTime, str_enum, utcnow


class Support(str, enum.Enum):
    native = "native"
    emulated = "emulated"
    unsupported = "unsupported"


class Accelerator(Base):
    __tablename__ = "accelerators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    min_capability: Mapped[int | None]
    reference_only: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    entries: Mapped[list["CompatibilityEntry"]] = relationship(
        back_populates="accelerator", cascade="all, delete-orphan", order_by="CompatibilityEntry.id"
    )


class CompatibilityEntry(Base):
    __tablename__ = "compatibility_entries"
    __table_args__ = (UniqueConstraint("accelerator_id", "format", "op_kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    accelerator_id: Mapped[int] = mapped_column(ForeignKey("accelerators.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(32))
    op_kind: Mapped[str] = mapped_column(String(32))
    support: Mapped[Support] = mapped_column(str_enum(Support, "support"))
    kernel: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")

    accelerator: Mapped[Accelerator] = relationship(back_populates="entries")
