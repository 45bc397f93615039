"""Registering and listing models."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from controlplane.deps import AppSettings, CurrentKey, DbSession, Submitter, Viewer
from controlplane.fields import IdPath
from controlplane.model_registry import service
from controlplane.model_registry.schemas import ModelCreate, ModelFilters, ModelPublic, ModelsPublic
from controlplane.pagination import Pagination

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", response_model=ModelPublic, status_code=status.HTTP_201_CREATED, dependencies=[Submitter],
             responses={200: {"model": ModelPublic, "description": "Already registered: the existing model."}})
def register_model(model_in: ModelCreate, db: DbSession, settings: AppSettings, caller: CurrentKey,
                   response: Response) -> ModelPublic:
    """Registers a local transformers folder, pinned by the hash of its files."""
    model, created = service.register(db=db, model_in=model_in, roots=settings.models_roots, actor=caller.owner)
    if not created:
        response.status_code = status.HTTP_200_OK
    return ModelPublic.model_validate(model)


@router.get("", response_model=ModelsPublic, dependencies=[Viewer])
def list_models(db: DbSession, page: Pagination, filters: Annotated[ModelFilters, Query()]) -> ModelsPublic:
    """Registered models, newest first."""
    rows, count = service.list_models(db=db, filters=filters, page=page)
    return ModelsPublic(data=[ModelPublic.model_validate(r) for r in rows], count=count)


@router.get("/{model_id}", response_model=ModelPublic, dependencies=[Viewer])
def get_model(model_id: IdPath, db: DbSession) -> ModelPublic:
    """One registered model."""
    return ModelPublic.model_validate(service.get(db=db, model_id=model_id))
