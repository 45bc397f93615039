"""Request dependencies: the database session, the settings, the caller's key, role guards, load-or-404."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from controlplane.auth import service as auth_service
from controlplane.auth.models import ApiKey, Role
from controlplane.db import get_db
from controlplane.deployments import service as deployments_service
from controlplane.deployments.models import Deployment
from controlplane.errors import PermissionDenied, Unauthenticated
from controlplane.fields import IdPath
from controlplane.settings import Settings

DbSession = Annotated[Session, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer pops_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: pops_...`")


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


AppSettings = Annotated[Settings, Depends(get_app_settings)]


def get_current_key(
    db: DbSession,
    settings: AppSettings,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> ApiKey:
    """The caller's live API key, or 401. The key itself is never logged."""
    presented = bearer.credentials if bearer is not None else header_key
    if not presented:
        raise Unauthenticated("missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                              loc=("header", "authorization"))
    key = auth_service.authenticate(db=db, presented=presented, pepper=settings.api_key_pepper.get_secret_value())
    if key is None:
        raise Unauthenticated("invalid or revoked API key", loc=("header", "authorization"))
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def require_role(role: Role) -> Callable[[ApiKey], ApiKey]:
    """A guard for a route decorator: 403 unless the caller's role includes `role`."""

    def guard(key: CurrentKey) -> ApiKey:
        if not auth_service.has_role(key, role):
            raise PermissionDenied(
                f"this action needs the {role.value!r} role; key {key.prefix} of {key.owner!r} has {Role(key.role).value!r}",
                loc=("header", "authorization"),
            )
        return key

    guard.__name__ = f"require_{role.value}"
    return guard


Viewer = Depends(require_role(Role.viewer))
Submitter = Depends(require_role(Role.submitter))
Approver = Depends(require_role(Role.approver))
Admin = Depends(require_role(Role.admin))


def _current_deployment(deployment_id: IdPath, db: DbSession) -> Deployment:
    return deployments_service.get(db=db, deployment_id=deployment_id)


def _locked_deployment(deployment_id: IdPath, db: DbSession) -> Deployment:
    # Row lock on PostgreSQL: concurrent writes to one deployment queue up, then the version check decides.
    return deployments_service.get(db=db, deployment_id=deployment_id, for_update=True)


CurrentDeployment = Annotated[Deployment, Depends(_current_deployment)]
LockedDeployment = Annotated[Deployment, Depends(_locked_deployment)]
