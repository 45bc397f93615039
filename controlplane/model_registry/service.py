"""Registering local model folders: confined to the allowed roots, checked, and pinned by content hash."""
from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.audit import service as audit
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.model_registry.models import RegisteredModel
from controlplane.model_registry.schemas import ModelCreate, ModelFilters
from controlplane.pagination import PageParams, paginate
from runtime.models import content_hash

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_LOC = ("body", "path")


def resolve_path(raw: str, *, roots: list[Path]) -> Path:
    """The real folder a requested path names; InvalidInput unless it lies under an allowed root."""
    try:
        path = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise InvalidInput(f"path {raw!r} cannot be resolved: {exc}", loc=_LOC) from None
    if not any(path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise InvalidInput(f"path {raw!r} is outside the allowed model folders ({allowed})", loc=_LOC)
    if not path.is_dir():
        raise InvalidInput(f"no model folder at {raw!r}", loc=_LOC)
    return path


def inspect_folder(path: Path) -> tuple[dict, int]:
    """(config.json, size of the weight files) of a transformers folder; InvalidInput naming what is missing."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InvalidInput(f"{str(path)!r} is not a transformers model folder: config.json is missing", loc=_LOC)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"config.json in {str(path)!r} is not valid JSON: {exc}", loc=_LOC) from None
    if not isinstance(config, dict) or not (config.get("architectures") or config.get("model_type")):
        raise InvalidInput(f"config.json in {str(path)!r} names no architecture or model_type", loc=_LOC)
    weights = [f for f in path.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES]
    if not weights:
        raise InvalidInput(f"{str(path)!r} has no weight files (*.safetensors or *.bin)", loc=_LOC)
    return config, sum(f.stat().st_size for f in weights)


def register(*, db: Session, model_in: ModelCreate, roots: list[Path], actor: str) -> tuple[RegisteredModel, bool]:
    """Registers a model folder; (model, created). Registering the same folder again returns it unchanged."""
    path = resolve_path(model_in.path, roots=roots)
    config, size = inspect_folder(path)
    digest = content_hash(path)
    existing = db.scalar(select(RegisteredModel).where(RegisteredModel.name == model_in.name))
    if existing is not None:
        if existing.content_hash == digest and existing.path == str(path):
            return existing, False
        raise Conflict(f"model name {model_in.name!r} is taken by {existing.path} ({existing.content_hash}); "
                       "pick another name", loc=("body", "name"))
    architectures = config.get("architectures") or []
    model = RegisteredModel(
        name=model_in.name,
        path=str(path),
        content_hash=digest,
        architecture=str(architectures[0]) if architectures else None,
        model_type=str(config["model_type"]) if config.get("model_type") else None,
        size_bytes=size,
        description=model_in.description,
        created_by=actor,
    )
    db.add(model)
    db.flush()
    audit.record(db=db, actor=actor, action="model.register", object_type="model", object_id=model.id,
                 after=audit.snapshot(model), reason=model_in.reason)
    db.commit()
    return model, True


def get(*, db: Session, model_id: int, loc: tuple = ()) -> RegisteredModel:
    """A registered model by id, or NotFound."""
    model = db.get(RegisteredModel, model_id)
    if model is None:
        raise NotFound("model", model_id, loc=loc)
    return model


def get_by_name(*, db: Session, name: str) -> RegisteredModel | None:
    """A registered model by name."""
    return db.scalar(select(RegisteredModel).where(RegisteredModel.name == name))


def list_models(*, db: Session, filters: ModelFilters, page: PageParams) -> tuple[list[RegisteredModel], int]:
    """Registered models, newest first."""
    stmt = select(RegisteredModel)
    if filters.name is not None:
        stmt = stmt.where(RegisteredModel.name == filters.name)
    if filters.content_hash is not None:
        stmt = stmt.where(RegisteredModel.content_hash == filters.content_hash)
    return paginate(db=db, stmt=stmt.order_by(RegisteredModel.id.desc()), page=page)
