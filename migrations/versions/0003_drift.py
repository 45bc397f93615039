"""drift: each deployment's sequential-test state, its recorded analyses, and each endpoint's traffic profile

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_OUTCOMES = ("successful", "failed", "inconclusive", "error")


def _enum(name: str, *values: str) -> sa.Enum:
    # VARCHAR plus a CHECK constraint (as controlplane.db.str_enum): no PostgreSQL TYPE to migrate later.
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True,
                   length=max(map(len, values)) + 8)


def upgrade() -> None:
    op.create_table(
        "traffic_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Double(), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("length_buckets", _JSON, nullable=False),
        sa.Column("scripts", _JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_traffic_profiles")),
        sa.UniqueConstraint("endpoint", name=op.f("uq_traffic_profiles_endpoint")),
    )
    op.create_table(
        "drift_states",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("engine_id", sa.Integer(), nullable=False),
        sa.Column("statistics", _JSON, nullable=False),
        sa.Column("samples_seen", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("consecutive_errors", sa.Integer(), nullable=False),
        sa.Column("last_outcome", _enum("drift_state_outcome", *_OUTCOMES), nullable=True),
        sa.Column("last_recorded_at", _TIME, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"],
                                name=op.f("fk_drift_states_deployment_id_deployments")),
        sa.ForeignKeyConstraint(["engine_id"], ["engines.id"], name=op.f("fk_drift_states_engine_id_engines")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_states")),
        sa.UniqueConstraint("deployment_id", name=op.f("uq_drift_states_deployment_id")),
    )
    op.create_table(
        "drift_analyses",
        sa.Column("id", _ID, nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("engine_id", sa.Integer(), nullable=False),
        sa.Column("outcome", _enum("drift_analysis_outcome", *_OUTCOMES), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("window_start", _TIME, nullable=False),
        sa.Column("window_end", _TIME, nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("new_samples", sa.Integer(), nullable=False),
        sa.Column("checks", _JSON, nullable=False),
        sa.Column("sequential", _JSON, nullable=False),
        sa.Column("evidence", _JSON, nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("consecutive_errors", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_drift_analyses_alert_id_alerts")),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"],
                                name=op.f("fk_drift_analyses_deployment_id_deployments")),
        sa.ForeignKeyConstraint(["engine_id"], ["engines.id"], name=op.f("fk_drift_analyses_engine_id_engines")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_analyses")),
    )
    with op.batch_alter_table("drift_analyses") as batch_op:
        batch_op.create_index("ix_drift_analyses_deployment_created", ["deployment_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_drift_analyses_outcome"), ["outcome"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("drift_analyses") as batch_op:
        batch_op.drop_index(batch_op.f("ix_drift_analyses_outcome"))
        batch_op.drop_index("ix_drift_analyses_deployment_created")
    op.drop_table("drift_analyses")
    op.drop_table("drift_states")
    op.drop_table("traffic_profiles")
