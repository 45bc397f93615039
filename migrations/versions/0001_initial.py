"""Initial schema: every control-plane table but jobs (0002_jobs), plus append-only triggers.

Revision ID: 0001
Revises: 
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements only INTEGER keys

# Rows the database itself refuses to change: (table, refused operations).
APPEND_ONLY = (("audit_events", ("UPDATE", "DELETE")), ("approvals", ("UPDATE", "DELETE")), ("recipes", ("UPDATE",)))


def _create_guards() -> None:
    """Triggers that make audit events and approvals append-only and recipes immutable."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION pops_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP "
            "USING ERRCODE = 'integrity_constraint_violation'; END $$"
        )
        for table, ops in APPEND_ONLY:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE {' OR '.join(ops)} ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION pops_refuse_change()")
        return
    for table, ops in APPEND_ONLY:
        for kind in ops:
            op.execute(f"CREATE TRIGGER {table}_no_{kind.lower()} BEFORE {kind} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {kind} refused'); END")


def _drop_guards() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, _ in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS pops_refuse_change()")
        return
    for table, ops in APPEND_ONLY:
        for kind in ops:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{kind.lower()}")


def upgrade() -> None:
    op.create_table('accelerators',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('min_capability', sa.Integer(), nullable=True),
    sa.Column('reference_only', sa.Boolean(), nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accelerators')),
    sa.UniqueConstraint('name', name=op.f('uq_accelerators_name'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('salt', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('role', sa.Enum('viewer', 'submitter', 'approver', 'admin', name='api_key_role', native_enum=False, create_constraint=True, length=17), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('revoked_at', TIMESTAMP, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_owner'), ['owner'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('object_type', sa.String(length=64), nullable=False),
    sa.Column('object_id', sa.String(length=128), nullable=False),
    sa.Column('before', JSON, nullable=True),
    sa.Column('after', JSON, nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_actor'), ['actor'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_at'), ['at'], unique=False)
        batch_op.create_index('ix_audit_events_object', ['object_type', 'object_id'], unique=False)

    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=80), nullable=False),
    sa.Column('architecture', sa.String(length=128), nullable=True),
    sa.Column('model_type', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('name', name=op.f('uq_models_name'))
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_content_hash'), ['content_hash'], unique=False)

    op.create_table('compatibility_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('accelerator_id', sa.Integer(), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('op_kind', sa.String(length=32), nullable=False),
    sa.Column('support', sa.Enum('native', 'emulated', 'unsupported', name='support', native_enum=False, create_constraint=True, length=19), nullable=False),
    sa.Column('kernel', sa.String(length=128), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['accelerator_id'], ['accelerators.id'], name=op.f('fk_compatibility_entries_accelerator_id_accelerators'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_compatibility_entries')),
    sa.UniqueConstraint('accelerator_id', 'format', 'op_kind', name=op.f('uq_compatibility_entries_accelerator_id_format_op_kind'))
    )
    with op.batch_alter_table('compatibility_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_compatibility_entries_accelerator_id'), ['accelerator_id'], unique=False)

    op.create_table('corpora',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('content_hash', sa.String(length=80), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sample_count', sa.Integer(), nullable=False),
    sa.Column('coverage', JSON, nullable=False),
    sa.Column('tokenizer_model_id', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['tokenizer_model_id'], ['models.id'], name=op.f('fk_corpora_tokenizer_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_corpora')),
    sa.UniqueConstraint('name', name=op.f('uq_corpora_name'))
    )
    with op.batch_alter_table('corpora', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_corpora_content_hash'), ['content_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_corpora_tokenizer_model_id'), ['tokenizer_model_id'], unique=False)

    op.create_table('recipes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=80), nullable=False),
    sa.Column('yaml_text', sa.Text(), nullable=False),
    sa.Column('spec', JSON, nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_recipes_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recipes')),
    sa.UniqueConstraint('name', 'version', name=op.f('uq_recipes_name_version'))
    )
    with op.batch_alter_table('recipes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recipes_content_hash'), ['content_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_recipes_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_recipes_name'), ['name'], unique=False)

    op.create_table('calibrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=80), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('recipe_id', sa.Integer(), nullable=False),
    sa.Column('corpus_id', sa.Integer(), nullable=False),
    sa.Column('stats_uri', sa.Text(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('seq_len', sa.Integer(), nullable=False),
    sa.Column('summary', JSON, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['corpus_id'], ['corpora.id'], name=op.f('fk_calibrations_corpus_id_corpora')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_calibrations_model_id_models')),
    sa.ForeignKeyConstraint(['recipe_id'], ['recipes.id'], name=op.f('fk_calibrations_recipe_id_recipes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibrations')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_calibrations_content_hash'))
    )
    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calibrations_corpus_id'), ['corpus_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_calibrations_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_calibrations_recipe_id'), ['recipe_id'], unique=False)

    op.create_table('engines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=80), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('manifest', JSON, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('recipe_id', sa.Integer(), nullable=False),
    sa.Column('accelerator_id', sa.Integer(), nullable=False),
    sa.Column('calibration_id', sa.Integer(), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['accelerator_id'], ['accelerators.id'], name=op.f('fk_engines_accelerator_id_accelerators')),
    sa.ForeignKeyConstraint(['calibration_id'], ['calibrations.id'], name=op.f('fk_engines_calibration_id_calibrations')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_engines_model_id_models')),
    sa.ForeignKeyConstraint(['recipe_id'], ['recipes.id'], name=op.f('fk_engines_recipe_id_recipes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_engines')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_engines_content_hash'))
    )
    with op.batch_alter_table('engines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_engines_accelerator_id'), ['accelerator_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_engines_calibration_id'), ['calibration_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_engines_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_engines_recipe_id'), ['recipe_id'], unique=False)

    op.create_table('deployments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('endpoint', sa.String(length=128), nullable=False),
    sa.Column('engine_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.Enum('shadow', 'canary', 'active', 'paused', 'rolled_back', 'retired', name='deployment_stage', native_enum=False, create_constraint=True, length=19), nullable=False),
    sa.Column('paused_from', sa.Enum('shadow', 'canary', 'active', 'paused', 'rolled_back', 'retired', name='deployment_paused_from', native_enum=False, create_constraint=True, length=19), nullable=True),
    sa.Column('traffic_share', sa.Double(), nullable=False),
    sa.Column('last_known_good_engine_id', sa.Integer(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['engine_id'], ['engines.id'], name=op.f('fk_deployments_engine_id_engines')),
    sa.ForeignKeyConstraint(['last_known_good_engine_id'], ['engines.id'], name=op.f('fk_deployments_last_known_good_engine_id_engines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments'))
    )
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployments_endpoint'), ['endpoint'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployments_engine_id'), ['engine_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployments_stage'), ['stage'], unique=False)
        batch_op.create_index('uq_deployments_endpoint_active', ['endpoint'], unique=True, postgresql_where=sa.text("stage = 'active'"), sqlite_where=sa.text("stage = 'active'"))
        batch_op.create_index('uq_deployments_endpoint_rollout', ['endpoint'], unique=True, postgresql_where=sa.text("stage IN ('shadow', 'canary', 'paused')"), sqlite_where=sa.text("stage IN ('shadow', 'canary', 'paused')"))

    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('engine_id', sa.Integer(), nullable=False),
    sa.Column('corpus_id', sa.Integer(), nullable=False),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('by_slice', JSON, nullable=False),
    sa.Column('by_bucket', JSON, nullable=False),
    sa.Column('gates', JSON, nullable=False),
    sa.Column('verdict', sa.Enum('passed', 'failed', name='verdict', native_enum=False, create_constraint=True, length=14), nullable=False),
    sa.Column('report_uri', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['corpus_id'], ['corpora.id'], name=op.f('fk_evaluations_corpus_id_corpora')),
    sa.ForeignKeyConstraint(['engine_id'], ['engines.id'], name=op.f('fk_evaluations_engine_id_engines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations'))
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_corpus_id'), ['corpus_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluations_engine_id'), ['engine_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluations_verdict'), ['verdict'], unique=False)

    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('engine_id', sa.Integer(), nullable=True),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('evidence', JSON, nullable=False),
    sa.Column('status', sa.Enum('open', 'acknowledged', 'resolved', name='alert_status', native_enum=False, create_constraint=True, length=20), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.Column('resolved_at', TIMESTAMP, nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_alerts_deployment_id_deployments')),
    sa.ForeignKeyConstraint(['engine_id'], ['engines.id'], name=op.f('fk_alerts_engine_id_engines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_deployment_id'), ['deployment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_status'), ['status'], unique=False)

    op.create_table('approvals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('approver', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('from_stage', sa.Enum('shadow', 'canary', 'active', 'paused', 'rolled_back', 'retired', name='approval_from_stage', native_enum=False, create_constraint=True, length=19), nullable=False),
    sa.Column('to_stage', sa.Enum('shadow', 'canary', 'active', 'paused', 'rolled_back', 'retired', name='approval_to_stage', native_enum=False, create_constraint=True, length=19), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_approvals_deployment_id_deployments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approvals'))
    )
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_deployment_id'), ['deployment_id'], unique=False)

    op.create_table('canary_samples',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('engine_id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('kl_mean', sa.Double(), nullable=False),
    sa.Column('kl_max', sa.Double(), nullable=False),
    sa.Column('top1_agreement', sa.Double(), nullable=False),
    sa.Column('saturation', JSON, nullable=False),
    sa.Column('amax_ratio', JSON, nullable=False),
    sa.Column('slice', sa.String(length=64), nullable=True),
    sa.Column('length_bucket', sa.String(length=32), nullable=True),
    sa.Column('script', sa.String(length=32), nullable=True),
    sa.Column('num_tokens', sa.Integer(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_canary_samples_deployment_id_deployments')),
    sa.ForeignKeyConstraint(['engine_id'], ['engines.id'], name=op.f('fk_canary_samples_engine_id_engines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_canary_samples')),
    sa.UniqueConstraint('deployment_id', 'request_id', name=op.f('uq_canary_samples_deployment_id_request_id'))
    )
    with op.batch_alter_table('canary_samples', schema=None) as batch_op:
        batch_op.create_index('ix_canary_samples_deployment_created', ['deployment_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_canary_samples_engine_id'), ['engine_id'], unique=False)

    op.create_table('canary_windows',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('engine_id', sa.Integer(), nullable=False),
    sa.Column('window_start', TIMESTAMP, nullable=False),
    sa.Column('window_seconds', sa.Integer(), nullable=False),
    sa.Column('sample_count', sa.Integer(), nullable=False),
    sa.Column('kl_mean_sum', sa.Double(), nullable=False),
    sa.Column('kl_mean_sq_sum', sa.Double(), nullable=False),
    sa.Column('kl_max', sa.Double(), nullable=False),
    sa.Column('top1_sum', sa.Double(), nullable=False),
    sa.Column('top1_min', sa.Double(), nullable=False),
    sa.Column('saturation_max', JSON, nullable=False),
    sa.Column('amax_ratio_max', JSON, nullable=False),
    sa.Column('slices', JSON, nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_canary_windows_deployment_id_deployments')),
    sa.ForeignKeyConstraint(['engine_id'], ['engines.id'], name=op.f('fk_canary_windows_engine_id_engines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_canary_windows')),
    sa.UniqueConstraint('deployment_id', 'engine_id', 'window_start', name=op.f('uq_canary_windows_deployment_id_engine_id_window_start'))
    )
    with op.batch_alter_table('canary_windows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_canary_windows_deployment_id'), ['deployment_id'], unique=False)

    op.create_table('drift_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('kl_mean_max', sa.Double(), nullable=False),
    sa.Column('kl_p95_max', sa.Double(), nullable=False),
    sa.Column('top1_agreement_min', sa.Double(), nullable=False),
    sa.Column('saturation_max', sa.Double(), nullable=False),
    sa.Column('amax_ratio_max', sa.Double(), nullable=False),
    sa.Column('window_seconds', sa.Integer(), nullable=False),
    sa.Column('min_samples', sa.Integer(), nullable=False),
    sa.Column('false_alarm_rate', sa.Double(), nullable=False),
    sa.Column('consecutive_failure_limit', sa.Integer(), nullable=False),
    sa.Column('consecutive_error_limit', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_drift_policies_deployment_id_deployments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drift_policies')),
    sa.UniqueConstraint('deployment_id', name=op.f('uq_drift_policies_deployment_id'))
    )

    _create_guards()

def downgrade() -> None:
    _drop_guards()
    op.drop_table('drift_policies')
    with op.batch_alter_table('canary_windows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_canary_windows_deployment_id'))

    op.drop_table('canary_windows')
    with op.batch_alter_table('canary_samples', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_canary_samples_engine_id'))
        batch_op.drop_index('ix_canary_samples_deployment_created')

    op.drop_table('canary_samples')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approvals_deployment_id'))

    op.drop_table('approvals')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_status'))
        batch_op.drop_index(batch_op.f('ix_alerts_deployment_id'))
        batch_op.drop_index(batch_op.f('ix_alerts_created_at'))

    op.drop_table('alerts')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_verdict'))
        batch_op.drop_index(batch_op.f('ix_evaluations_engine_id'))
        batch_op.drop_index(batch_op.f('ix_evaluations_corpus_id'))

    op.drop_table('evaluations')
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_index('uq_deployments_endpoint_rollout', postgresql_where=sa.text("stage IN ('shadow', 'canary', 'paused')"), sqlite_where=sa.text("stage IN ('shadow', 'canary', 'paused')"))
        batch_op.drop_index('uq_deployments_endpoint_active', postgresql_where=sa.text("stage = 'active'"), sqlite_where=sa.text("stage = 'active'"))
        batch_op.drop_index(batch_op.f('ix_deployments_stage'))
        batch_op.drop_index(batch_op.f('ix_deployments_engine_id'))
        batch_op.drop_index(batch_op.f('ix_deployments_endpoint'))

    op.drop_table('deployments')
    with op.batch_alter_table('engines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_engines_recipe_id'))
        batch_op.drop_index(batch_op.f('ix_engines_model_id'))
        batch_op.drop_index(batch_op.f('ix_engines_calibration_id'))
        batch_op.drop_index(batch_op.f('ix_engines_accelerator_id'))

    op.drop_table('engines')
    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calibrations_recipe_id'))
        batch_op.drop_index(batch_op.f('ix_calibrations_model_id'))
        batch_op.drop_index(batch_op.f('ix_calibrations_corpus_id'))

    op.drop_table('calibrations')
    with op.batch_alter_table('recipes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recipes_name'))
        batch_op.drop_index(batch_op.f('ix_recipes_model_id'))
        batch_op.drop_index(batch_op.f('ix_recipes_content_hash'))

    op.drop_table('recipes')
    with op.batch_alter_table('corpora', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_corpora_tokenizer_model_id'))
        batch_op.drop_index(batch_op.f('ix_corpora_content_hash'))

    op.drop_table('corpora')
    with op.batch_alter_table('compatibility_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_compatibility_entries_accelerator_id'))

    op.drop_table('compatibility_entries')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_content_hash'))

    op.drop_table('models')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_object')
        batch_op.drop_index(batch_op.f('ix_audit_events_at'))
        batch_op.drop_index(batch_op.f('ix_audit_events_actor'))
        batch_op.drop_index(batch_op.f('ix_audit_events_action'))

    op.drop_table('audit_events')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_owner'))

    op.drop_table('api_keys')
    op.drop_table('accelerators')
