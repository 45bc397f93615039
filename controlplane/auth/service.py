"""Creating, checking and revoking API keys.

A key reads `pops_<prefix>_<secret>`. The prefix (8 hex characters) is stored in clear to find
the row and to name the key in lists; the whole key is stored only as HMAC-SHA256 under the
server's pepper and a per-key salt. Keys carry 256 random bits, so a fast keyed hash is enough
(slow password hashes exist for low-entropy secrets).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.audit import service as audit
from controlplane.auth.models import ApiKey, Role
from controlplane.auth.schemas import ApiKeyCreate, ApiKeyFilters
from controlplane.db import utcnow
from controlplane.errors import Conflict, NotFound
from controlplane.pagination import PageParams, paginate

KEY_SCHEME = "pops"


def _hash(key: str, *, salt: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), (salt + key).encode(), hashlib.sha256).hexdigest()


def _split(presented: str) -> str | None:
    """The prefix of a well-formed key, or None."""
    parts = presented.split("_", 2)  # the secret itself may contain "_"
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != 8 or len(parts[2]) < 32:
        return None
    return parts[1]


def create(*, db: Session, key_in: ApiKeyCreate, pepper: str, actor: str) -> tuple[ApiKey, str]:
    """Creates a key and returns it with its plaintext, which is never stored or shown again."""
    prefix = secrets.token_hex(4)
    while db.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is not None:
        prefix = secrets.token_hex(4)
    plaintext = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_hex(16)
    key = ApiKey(
        prefix=prefix,
        key_hash=_hash(plaintext, salt=salt, pepper=pepper),
        salt=salt,
        owner=key_in.owner,
        role=key_in.role,
        description=key_in.description,
        created_by=actor,
    )
    db.add(key)
    db.flush()
    audit.record(db=db, actor=actor, action="api_key.create", object_type="api_key", object_id=key.id,
                 after=audit.snapshot(key), reason=key_in.reason)
    db.commit()
    return key, plaintext


def authenticate(*, db: Session, presented: str, pepper: str) -> ApiKey | None:
    """The live key matching the presented secret, or None (unknown, malformed, wrong or revoked)."""
    prefix = _split(presented)
    if prefix is None:
        return None
    key = db.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or key.revoked:
        return None
    if not hmac.compare_digest(key.key_hash, _hash(presented, salt=key.salt, pepper=pepper)):
        return None
    return key


def get(*, db: Session, key_id: int) -> ApiKey:
    """A key by id, or NotFound."""
    key = db.get(ApiKey, key_id)
    if key is None:
        raise NotFound("api_key", key_id)
    return key


def list_keys(*, db: Session, filters: ApiKeyFilters, page: PageParams) -> tuple[list[ApiKey], int]:
    """Keys matching the filters, newest first."""
    stmt = select(ApiKey)
    if filters.owner is not None:
        stmt = stmt.where(ApiKey.owner == filters.owner)
    if filters.role is not None:
        stmt = stmt.where(ApiKey.role == filters.role)
    if filters.revoked is not None:
        stmt = stmt.where(ApiKey.revoked_at.is_not(None) if filters.revoked else ApiKey.revoked_at.is_(None))
    return paginate(db=db, stmt=stmt.order_by(ApiKey.id.desc()), page=page)


def revoke(*, db: Session, key_id: int, actor: str, reason: str) -> ApiKey:
    """Revokes a key; it stops authenticating at once."""
    key = get(db=db, key_id=key_id)
    if key.revoked:
        raise Conflict(f"api_key {key_id} is already revoked", loc=("path", "key_id"))
    before = audit.snapshot(key)
    key.revoked_at = utcnow()
    audit.record(db=db, actor=actor, action="api_key.revoke", object_type="api_key", object_id=key.id,
                 before=before, after=audit.snapshot(key), reason=reason)
    db.commit()
    return key


def has_role(key: ApiKey, role: Role) -> bool:
    """Whether the key's role includes `role`."""
    return Role(key.role).includes(role)
