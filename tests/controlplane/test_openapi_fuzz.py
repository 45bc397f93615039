"""Fuzzing every operation of the OpenAPI schema: no generated input may cause a 5xx.

Runs against the ASGI app on a migrated SQLite database with seeded rows (so ids 1..n exist and
deeper paths run), authenticated as admin, a few examples per operation.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from controlplane import migrate
from controlplane.accelerators import service as accelerators_service
from controlplane.auth import service as auth_service
from controlplane.auth.models import Role
from controlplane.auth.schemas import ApiKeyCreate
from controlplane.deployments.models import Stage
from controlplane.main import create_app
from tests import factories
from tests.controlplane.databases import PEPPER, settings_for

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 3


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(settings_for(f"sqlite:///{tmp / 'pops.db'}", tmp))
    migrate.upgrade(app.state.settings)
    with app.state.session_factory() as db:
        accelerators_service.sync_from_runtime(db=db)
        _, key = auth_service.create(db=db, key_in=ApiKeyCreate(owner="fuzzer", role=Role.admin), pepper=PEPPER,
                                     actor="test")
        factories.bind(db)
        deployment = factories.DeploymentFactory(stage=Stage.canary, traffic_share=0.1)
        factories.AlertFactory(deployment=deployment)
        factories.CalibrationFactory()
        factories.bind(None)
        db.commit()
    app.state.fuzz_headers = {"Authorization": f"Bearer {key}"}
    app.state.fuzz_statuses = []
    yield app
    app.state.engine.dispose()


def _failures(app, operation, mode: GenerationMode) -> list[str]:
    """Runs a few generated requests against one operation; describes every 5xx."""
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(headers=app.state.fuzz_headers)
        app.state.fuzz_statuses.append(response.status_code)
        if response.status_code >= 500:
            failures.append(f"{operation.label} [{mode.value}] -> {response.status_code}: {response.text[:300]} "
                            f"(path={case.path_parameters}, query={case.query}, body={str(case.body)[:200]})")

    try:
        run()
    except Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE  # nothing to make invalid (no parameters, no body)
    return failures


def test_no_generated_request_gets_a_server_error(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 35
    failures = [f for op in operations for mode in GenerationMode for f in _failures(fuzz_app, op, mode)]
    assert not failures, "\n".join(failures)
    # The key worked and generated requests reached the handlers, not only the auth guard.
    statuses = fuzz_app.state.fuzz_statuses
    assert sum(s < 300 for s in statuses) >= len(operations) // 2 and statuses.count(401) < len(statuses) // 10
