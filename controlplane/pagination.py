"""Pagination shared by every list endpoint: `limit` and `offset` in, `{data, count}` out."""
from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")

MAX_LIMIT = 500


class Page(BaseModel, Generic[T]):
    """One page of a list: the rows and how many match the filters in total."""

    data: list[T]
    count: int


class PageParams(BaseModel):
    limit: int = 50
    offset: int = 0


def _page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip.")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


Pagination = Annotated[PageParams, Depends(_page_params)]


def count(*, db: Session, stmt: Select[Any]) -> int:
    """How many rows a select matches, ignoring its order, limit and offset."""
    return db.scalar(select(func.count()).select_from(stmt.order_by(None).limit(None).offset(None).subquery())) or 0


def paginate(*, db: Session, stmt: Select[Any], page: PageParams) -> tuple[list[Any], int]:
    """Runs a filtered, ordered select of one entity for one page and counts every match."""
    rows = list(db.scalars(stmt.limit(page.limit).offset(page.offset)))
    return rows, count(db=db, stmt=stmt)
