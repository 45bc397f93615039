"""Faults: a PostgreSQL connection dropped under the pool is replaced (pool pre-ping) and the next request works."""
from __future__ import annotations

import psycopg
import pytest
from fastapi.testclient import TestClient

from controlplane import migrate
from controlplane.auth import service as auth_service
from controlplane.auth.models import Role
from controlplane.auth.schemas import ApiKeyCreate
from controlplane.db import make_session_factory
from controlplane.main import create_app
from tests.controlplane.databases import PEPPER, PG_ADMIN_URL, create_database, drop_database, settings_for

pytestmark = pytest.mark.services


@pytest.fixture
def committed_app(tmp_path):
    """An app on its own migrated PostgreSQL database, with its real pool (no test transaction)."""
    url = create_database()
    settings = settings_for(url, tmp_path, db_pool_size=2)
    migrate.upgrade(settings)
    app = create_app(settings)
    with make_session_factory(app.state.engine)() as db:
        _, key = auth_service.create(db=db, key_in=ApiKeyCreate(owner="ops", role=Role.admin), pepper=PEPPER,
                                     actor="test")
    yield app, url.rsplit("/", 1)[1], {"Authorization": f"Bearer {key}"}
    app.state.engine.dispose()
    drop_database(url)


def _terminate_backends(database: str) -> int:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()
    return len(rows)


def test_requests_succeed_after_the_server_drops_every_connection(committed_app):
    app, database, headers = committed_app
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/v1/recipes", headers=headers).status_code == 200
        assert app.state.engine.pool.checkedin() >= 1  # an idle pooled connection to be killed
        assert _terminate_backends(database) >= 1
        for _ in range(3):  # every pooled connection is dead; each checkout must notice and reconnect
            response = client.get("/v1/recipes", headers=headers)
            assert response.status_code == 200, response.text
        created = client.post("/v1/api-keys", json={"owner": "after-drop", "role": "viewer"}, headers=headers)
        assert created.status_code == 201


def test_unreachable_database_is_503_without_details(tmp_path):
    settings = settings_for("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", tmp_path)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/recipes", headers={"X-API-Key": "pops_00000000_" + "x" * 43})
        assert response.status_code == 503
        assert response.json() == {"detail": [{"loc": [], "msg": "the database is unavailable; retry shortly",
                                               "type": "unavailable"}]}
        assert client.get("/v1/health").status_code == 503
    app.state.engine.dispose()


def test_concurrent_batches_for_one_deployment_all_land(committed_app):
    """Batches racing on one deployment (one window row, one drift state) serialize; none deadlocks or is lost."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from pydantic import TypeAdapter

    from controlplane.canary import service as canary_service
    from controlplane.canary.models import CanaryWindow
    from controlplane.canary.schemas import CanarySampleIn
    from controlplane.deployments import service as deployments_service
    from controlplane.deployments.models import Stage
    from tests import factories

    app, _, _ = committed_app
    with app.state.session_factory() as db:
        factories.bind(db)
        deployment = factories.DeploymentFactory(stage=Stage.canary, traffic_share=0.1)
        factories.bind(None)
        db.commit()
        deployment_id, engine_id = deployment.id, deployment.engine_id
    rng = random.Random(0)
    batches = [[{"engine_id": engine_id, "kl_mean": (k := rng.uniform(1e-4, 1e-2)), "kl_max": 2 * k,
                 "top1_agreement": rng.uniform(0.95, 1.0)} for _ in range(20)] for _ in range(24)]
    adapter = TypeAdapter(list[CanarySampleIn])

    def ingest(batch):
        with app.state.session_factory() as db:
            target = deployments_service.get(db=db, deployment_id=deployment_id)
            return canary_service.ingest(db=db, deployment=target, samples=adapter.validate_python(batch),
                                         window_seconds=3600, max_batch=1000, actor="racer").accepted

    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = list(pool.map(ingest, batches))
    assert accepted == [20] * 24
    with app.state.session_factory() as db:
        windows = db.query(CanaryWindow).filter_by(deployment_id=deployment_id).all()
        assert sum(w.sample_count for w in windows) == 480
        assert sum(w.kl_mean_sum for w in windows) == pytest.approx(sum(s["kl_mean"] for b in batches for s in b),
                                                                   rel=1e-12)
