"""Imports every domain's models so `Base.metadata` names all tables (Alembic, tests)."""
from __future__ import annotations

import importlib

from controlplane.db import Base

DOMAIN_MODELS = (
    "controlplane.auth.models",
    "controlplane.audit.models",
    "controlplane.model_registry.models",
    "controlplane.recipes.models",
    "controlplane.corpora.models",
    "controlplane.accelerators.models",
    "controlplane.calibrations.models",
    "controlplane.engines.models",
    "controlplane.evaluations.models",
    "controlplane.deployments.models",
    "controlplane.canary.models",
    "controlplane.alerts.models",
)
# Domains other helpers add; imported when present so their tables join the metadata.
OPTIONAL_MODELS = ("controlplane.jobs.models", "controlplane.drift.models")


def load_all_models() -> type[Base]:
    """Imports every models module and returns the declarative base holding their tables."""
    for name in DOMAIN_MODELS:
        importlib.import_module(name)
    for name in OPTIONAL_MODELS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
    return Base
