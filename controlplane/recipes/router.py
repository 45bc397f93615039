"""Submitting, reading and diffing recipes."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from controlplane.deps import CurrentKey, DbSession, Submitter, Viewer
from controlplane.fields import MAX_ID, Id, IdPath, OptionalReason
from controlplane.pagination import Pagination
from controlplane.recipes import service
from controlplane.recipes.schemas import YAML_TYPES, RecipeDiff, RecipeFilters, RecipePublic, RecipesPublic

router = APIRouter(prefix="/recipes", tags=["recipes"])

NamePath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Version = Annotated[int, Path(ge=1, le=MAX_ID)]
_BODY = {
    "requestBody": {
        "required": True,
        "description": "A recipe document (runtime.recipes.Recipe) as YAML or JSON.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            YAML_TYPES[0]: {"schema": {"type": "string"}},
        },
    }
}


@router.post("", response_model=RecipePublic, status_code=status.HTTP_201_CREATED, dependencies=[Submitter],
             openapi_extra=_BODY,
             responses={200: {"model": RecipePublic, "description": "Identical to the latest version: returned as is."}})
async def submit_recipe(
    request: Request,
    response: Response,
    db: DbSession,
    caller: CurrentKey,
    model_id: Annotated[Id | None, Query(description="Validate against this registered model.")] = None,
    reason: Annotated[OptionalReason, Query()] = None,
) -> RecipePublic:
    """Stores a recipe as the next version of its name, after validating it (and against its model)."""
    body = await request.body()
    spec, yaml_source = service.parse(body=body, content_type=request.headers.get("content-type", ""))
    recipe, created = await run_in_threadpool(
        lambda: service.create(db=db, spec=spec, yaml_source=yaml_source, model_id=model_id, actor=caller.owner,
                               reason=reason)
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return RecipePublic.model_validate(recipe)


@router.get("", response_model=RecipesPublic, dependencies=[Viewer])
def list_recipes(db: DbSession, page: Pagination, filters: Annotated[RecipeFilters, Query()]) -> RecipesPublic:
    """Recipes, by name then newest version first."""
    rows, count = service.list_recipes(db=db, filters=filters, page=page)
    return RecipesPublic(data=[RecipePublic.model_validate(r) for r in rows], count=count)


@router.get("/{recipe_id}", response_model=RecipePublic, dependencies=[Viewer])
def get_recipe(recipe_id: IdPath, db: DbSession) -> RecipePublic:
    """One recipe version by id."""
    return RecipePublic.model_validate(service.get(db=db, recipe_id=recipe_id))


@router.get("/by-name/{name}/versions/{version}", response_model=RecipePublic, dependencies=[Viewer])
def get_recipe_version(name: NamePath, version: Version, db: DbSession) -> RecipePublic:
    """One version of a named recipe."""
    return RecipePublic.model_validate(service.get_version(db=db, name=name, version=version))


@router.get("/by-name/{name}/diff", response_model=RecipeDiff, dependencies=[Viewer])
def diff_recipe(
    name: NamePath,
    db: DbSession,
    from_version: Annotated[int, Query(ge=1, le=MAX_ID)],
    to_version: Annotated[int, Query(ge=1, le=MAX_ID)],
) -> RecipeDiff:
    """What changed between two versions of a recipe, field by field."""
    return service.diff(db=db, name=name, from_version=from_version, to_version=to_version)
