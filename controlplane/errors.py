"""Domain errors and the one handler that turns them into HTTP responses in FastAPI's `detail` shape.

Status codes:
  401 Unauthenticated, 403 PermissionDenied, 404 NotFound,
  409 Conflict / StaleVersion / IllegalTransition (the request is well formed but the object's
      current state refuses it: retrying with fresh state may succeed),
  413 PayloadTooLarge, 422 InvalidInput / InvalidRecipe / runtime InputError (the request itself is wrong),
  503 Unavailable (the database could not be reached).
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

from runtime.errors import InputError

log = logging.getLogger(__name__)


class DomainError(Exception):
    """An error the API reports to the caller: a status code and errors naming the field."""

    status_code = 400
    error_type = "domain_error"
    headers: dict[str, str] | None = None

    def __init__(self, msg: str, *, loc: tuple = (), errors: list[dict[str, Any]] | None = None):
        self.errors = errors or [{"loc": tuple(loc), "msg": msg, "type": self.error_type}]
        super().__init__(msg)


class Unauthenticated(DomainError):
    status_code = 401
    error_type = "unauthenticated"
    headers = {"WWW-Authenticate": "Bearer"}


class PermissionDenied(DomainError):
    status_code = 403
    error_type = "permission_denied"


class NotFound(DomainError):
    status_code = 404
    error_type = "not_found"

    def __init__(self, object_type: str, key: Any, *, loc: tuple = ()):
        super().__init__(f"{object_type} {key!s} not found", loc=loc or ("path", f"{object_type}_id"))


class Conflict(DomainError):
    status_code = 409
    error_type = "conflict"


class StaleVersion(Conflict):
    error_type = "stale_version"

    def __init__(self, object_type: str, key: Any, *, expected: int, current: int):
        super().__init__(
            f"{object_type} {key} is at version {current}, not {expected}; reload it and retry",
            loc=("body", "expected_version"),
        )
        self.expected, self.current = expected, current


class IllegalTransition(Conflict):
    error_type = "illegal_transition"

    def __init__(self, current: Any, requested: Any, *, allowed: list[Any] | tuple = (), action: str | None = None,
                 subject: str = "deployment", field: str = "stage"):
        names = ", ".join(str(getattr(a, "value", a)) for a in allowed) or "nothing (it is final)"
        cur, req = getattr(current, "value", current), getattr(requested, "value", requested)
        article = "an" if subject[:1] in "aeiou" else "a"
        verb = (f"{action} {article} {subject} in {field} {cur!r}" if action
                else f"move {article} {subject} from {field} {cur!r} to {req!r}")
        super().__init__(f"cannot {verb}; from {cur!r} it can move to: {names}", loc=("body", field))
        self.current, self.requested = current, requested


class PayloadTooLarge(DomainError):
    status_code = 413
    error_type = "payload_too_large"


class InvalidInput(DomainError):
    status_code = 422
    error_type = "value_error"


class InvalidRecipe(InvalidInput):
    error_type = "invalid_recipe"


class Unavailable(DomainError):
    status_code = 503
    error_type = "unavailable"


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", "value_error"))}
            for e in errors]


def to_domain_error(exc: Exception) -> DomainError:
    """Maps runtime and database errors to the domain error the caller should see."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, InputError):
        return InvalidInput("", errors=exc.errors)
    if isinstance(exc, RequestValidationError):
        # FastAPI's own 422, minus the echoed input: it may hold secrets or values JSON cannot encode (NaN).
        return InvalidInput("", errors=list(exc.errors()))
    if isinstance(exc, StaleDataError):
        return Conflict("the object was changed by another request; reload it and retry", loc=("body", "expected_version"))
    if isinstance(exc, DataError):
        # The database refused a value (out of range, unencodable); schemas catch most before this.
        return InvalidInput("a value is out of range or malformed for storage")
    if isinstance(exc, IntegrityError):
        # A unique or foreign-key constraint lost a race; never echo the SQL back.
        return Conflict("the write conflicts with existing data (a concurrent request created it first)")
    if isinstance(exc, OperationalError):
        return Unavailable("the database is unavailable; retry shortly")
    raise TypeError(f"no domain mapping for {type(exc).__name__}")


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The one place errors become responses: status from the class, body `{detail: [{loc, msg, type}]}`."""
    error = to_domain_error(exc)
    if error.status_code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse(
        status_code=error.status_code, content={"detail": _jsonable_errors(error.errors)}, headers=error.headers
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback on the server, answered with no detail (never a traceback)."""
    log.exception("%s %s raised %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse(status_code=500, content={"detail": [{"loc": [], "msg": "internal error; see server log",
                                                              "type": "internal_error"}]})


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handler for domain errors and for the runtime/database errors it maps."""
    app.add_exception_handler(Exception, unexpected_error_handler)
    for exc_class in (DomainError, InputError, RequestValidationError, StaleDataError, DataError, IntegrityError,
                      OperationalError):
        app.add_exception_handler(exc_class, domain_error_handler)
