"""Concurrent analyses that both find drift roll back once: real connections committing in parallel, on a
database of their own (PostgreSQL row locks; SQLite's single writer)."""
from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from controlplane import migrate
from controlplane.alerts.models import Alert
from controlplane.canary import service as canary
from controlplane.canary.schemas import CanarySampleIn
from controlplane.db import create_db_engine, make_session_factory
from controlplane.deployments.models import Approval, Deployment, Stage
from controlplane.errors import Conflict
from tests import factories
from tests.controlplane.databases import create_database, drop_database, settings_for

from .conftest import sample, static_engine

ROUNDS = 3
RACERS = 3


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def sessions(request, tmp_path) -> Iterator:
    """A session factory on a freshly migrated database (its writes really commit)."""
    url = create_database() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'race.db'}"
    settings = settings_for(url, tmp_path)
    migrate.upgrade(settings)
    engine = create_db_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()
    if request.param == "postgresql":
        drop_database(url)


def _ingest(factory, deployment_id: int, batch: list[dict]) -> str:
    with factory() as db:
        deployment = db.get(Deployment, deployment_id)
        try:
            canary.ingest(db=db, deployment=deployment, samples=[CanarySampleIn.model_validate(s) for s in batch],
                          window_seconds=60, max_batch=1000, actor="serving")
        except Conflict:
            return "refused"  # it read the deployment after the rollback committed
        return "stored"


def _rollout(factory, rng: random.Random) -> tuple[int, int, int]:
    with factory() as db:
        factories.bind(db)
        try:
            endpoint = f"race-{rng.randrange(10**9)}"
            good = factories.passing_engine()
            factories.DeploymentFactory(endpoint=endpoint, engine=good, stage=Stage.retired)
            active = factories.DeploymentFactory(endpoint=endpoint, engine=static_engine(), stage=Stage.active,
                                                 traffic_share=1.0, last_known_good_engine_id=good.id)
            db.commit()
            return active.id, active.engine_id, good.id
        finally:
            factories.bind(None)


def test_concurrent_failed_analyses_roll_back_once(sessions):
    rng = random.Random(4)
    for round_ in range(ROUNDS):
        deployment_id, engine_id, good_id = _rollout(sessions, rng)
        drifted = lambda tag: [sample(engine_id, rng, drift=True, request_id=f"{round_}-{tag}-{i}")  # noqa: E731
                               for i in range(6)]
        assert _ingest(sessions, deployment_id, drifted("first")) == "stored"  # one failure: below the limit

        barrier, results = threading.Barrier(RACERS), []
        batches = [drifted(f"racer{i}") for i in range(RACERS)]

        def race(batch):
            barrier.wait()
            results.append(_ingest(sessions, deployment_id, batch))

        threads = [threading.Thread(target=race, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == RACERS and "stored" in results

        with sessions() as db:
            endpoint = db.get(Deployment, deployment_id).endpoint
            assert db.get(Deployment, deployment_id).stage == Stage.rolled_back
            active = db.scalars(select(Deployment).where(Deployment.endpoint == endpoint,
                                                         Deployment.stage == Stage.active)).all()
            assert [d.engine_id for d in active] == [good_id]
            approvals = db.scalar(select(func.count()).select_from(Approval).where(
                Approval.deployment_id == deployment_id, Approval.action == "auto_rollback"))
            failed_alerts = [a for a in db.scalars(select(Alert).where(Alert.deployment_id == deployment_id))
                             if a.evidence.get("kind") == "drift_failed"]
            assert approvals == 1 and len(failed_alerts) == 1
