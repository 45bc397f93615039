"""API keys: only a peppered hash is stored; the prefix identifies a key in lists and logs."""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.db import Base, UTCDateTime, str_enum, utcnow


class Role(str, enum.Enum):
    """Ordered roles: each includes the ones below it (approver includes submitter, not the reverse)."""

    viewer = "viewer"
    submitter = "submitter"
    approver = "approver"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def includes(self, other: "Role") -> bool:
        return self.rank >= other.rank


class ApiKey(Base):
    __tablename__ = "api_keys"
    __audit_exclude__ = ("key_hash", "salt")

    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[Role] = mapped_column(str_enum(Role, "api_key_role"))
    description: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None
