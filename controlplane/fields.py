"""Field types shared by request schemas: bounded ids and text the database can store."""
from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator, Field

MAX_ID = 2**31 - 1  # ids fit a 32-bit INTEGER on both dialects; larger input is a 422, not a DB error


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL (0x00) characters")
    return value


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
Text = Annotated[str, AfterValidator(_no_nul)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
                 AfterValidator(_no_nul)]
Reason = Annotated[str, Field(min_length=1, max_length=2000, description="Why (recorded in the audit log)."),
                   AfterValidator(_no_nul)]
OptionalReason = Annotated[str | None, Field(max_length=2000, description="Why (recorded in the audit log)."),
                           AfterValidator(lambda v: _no_nul(v) if v is not None else v)]
