"""API key schemas: the plaintext appears only in the creation response."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from controlplane.auth.models import Role
from controlplane.fields import OptionalReason, Reason, Text
from controlplane.pagination import Page

Owner = Field(min_length=1, max_length=128, pattern=r"^[\w.@+-]+( [\w.@+-]+)*$",
              description="Who holds the key; named in every audit event it causes.")


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str = Owner
    role: Role
    description: Text | None = Field(None, max_length=500)
    reason: OptionalReason = None


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    prefix: str
    owner: str
    role: Role
    description: str | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself; shown once, store it now.")


class ApiKeysPublic(Page[ApiKeyPublic]):
    pass


class ApiKeyFilters(BaseModel):
    owner: Text | None = None
    role: Role | None = None
    revoked: bool | None = None


class Revoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason
