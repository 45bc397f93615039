"""API key management (admin) and `whoami`."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from controlplane.auth import service
from controlplane.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyFilters, ApiKeyPublic, ApiKeysPublic, Revoke
from controlplane.deps import Admin, AppSettings, CurrentKey, DbSession
from controlplane.fields import IdPath
from controlplane.pagination import Pagination

router = APIRouter(prefix="/api-keys", tags=["auth"])


@router.get("/me", response_model=ApiKeyPublic)
def whoami(key: CurrentKey) -> ApiKeyPublic:
    """The caller's own key."""
    return ApiKeyPublic.model_validate(key)


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED, dependencies=[Admin])
def create_key(key_in: ApiKeyCreate, db: DbSession, settings: AppSettings, caller: CurrentKey) -> ApiKeyCreated:
    """Issues a key; the response is the only place its plaintext ever appears."""
    key, plaintext = service.create(db=db, key_in=key_in, pepper=settings.api_key_pepper.get_secret_value(),
                                    actor=caller.owner)
    return ApiKeyCreated.model_validate({**ApiKeyPublic.model_validate(key).model_dump(), "key": plaintext})


@router.get("", response_model=ApiKeysPublic, dependencies=[Admin])
def list_keys(db: DbSession, page: Pagination, filters: Annotated[ApiKeyFilters, Query()]) -> ApiKeysPublic:
    """Keys, newest first (never their secrets)."""
    rows, count = service.list_keys(db=db, filters=filters, page=page)
    return ApiKeysPublic(data=[ApiKeyPublic.model_validate(r) for r in rows], count=count)


@router.get("/{key_id}", response_model=ApiKeyPublic, dependencies=[Admin])
def get_key(key_id: IdPath, db: DbSession) -> ApiKeyPublic:
    """One key."""
    return ApiKeyPublic.model_validate(service.get(db=db, key_id=key_id))


@router.post("/{key_id}/revoke", response_model=ApiKeyPublic, dependencies=[Admin])
def revoke_key(key_id: IdPath, body: Revoke, db: DbSession, caller: CurrentKey) -> ApiKeyPublic:
    """Revokes a key; it stops working at once."""
    return ApiKeyPublic.model_validate(service.revoke(db=db, key_id=key_id, actor=caller.owner, reason=body.reason))
