"""jobs: the `search` kind (mixed-precision search jobs that store a recipe)

`job_kind` is a VARCHAR with a CHECK constraint (controlplane.db.str_enum), not a PostgreSQL TYPE:
adding a kind replaces the constraint. On SQLite the batch operation copies the table to do so.
Downgrading deletes the search jobs (their recipes stay): the narrower constraint would refuse them.

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONSTRAINT = "ck_jobs_job_kind"
_BEFORE = ("calibrate", "build", "evaluate")
_AFTER = (*_BEFORE, "search")


def _kinds(kinds: tuple[str, ...]) -> str:
    return "kind IN ({})".format(", ".join(f"'{k}'" for k in kinds))


def _replace_check(kinds: tuple[str, ...]) -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f(_CONSTRAINT), type_="check")
        batch_op.create_check_constraint(op.f(_CONSTRAINT), _kinds(kinds))


def upgrade() -> None:
    _replace_check(_AFTER)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM jobs WHERE kind = 'search'"))
    _replace_check(_BEFORE)
