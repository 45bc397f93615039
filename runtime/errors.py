"""Errors for bad input, in FastAPI's `detail` shape so every layer can report the field."""
from __future__ import annotations

from typing import Any


class InputError(Exception):
    """Bad input: carries `errors`, a list of {loc, msg, type} naming each offending field.

    Not a ValueError on purpose: pydantic would swallow it into a ValidationError and lose the loc.
    """

    def __init__(self, errors: list[dict[str, Any]] | str, *, loc: tuple = (), type: str = "value_error"):
        if isinstance(errors, str):
            errors = [{"loc": tuple(loc), "msg": errors, "type": type}]
        self.errors = [{"type": "value_error", **e, "loc": tuple(e.get("loc", ()))} for e in errors]
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in self.errors))

    @classmethod
    def from_pydantic(cls, exc: Any, *, prefix: tuple = ()) -> "InputError":
        """Wraps a pydantic ValidationError, keeping each field location."""
        return cls([
            {"loc": prefix + tuple(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False)
        ])
