"""Submitting recipes (parse, validate, version) and reading them back."""
from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controlplane.audit import service as audit
from controlplane.errors import InvalidInput, InvalidRecipe, NotFound, PayloadTooLarge
from controlplane.model_registry import loader
from controlplane.model_registry import service as model_service
from controlplane.model_registry.models import RegisteredModel
from controlplane.recipes.diff import diff as diff_specs
from controlplane.recipes.models import Recipe
from controlplane.recipes.schemas import JSON_TYPES, MAX_RECIPE_BYTES, YAML_TYPES, RecipeDiff, RecipeFilters
from controlplane.pagination import PageParams, paginate
from runtime.errors import InputError
from runtime.recipes import Recipe as RecipeSpec
from runtime.recipes import validate_for_model


def _invalid(exc: InputError) -> InvalidRecipe:
    return InvalidRecipe("", errors=[dict(e, loc=("body",) + tuple(e["loc"])) for e in exc.errors])


def parse(*, body: bytes, content_type: str) -> tuple[RecipeSpec, str | None]:
    """Parses a submitted recipe; returns it with the YAML source when it came as YAML (comments kept)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if len(body) > MAX_RECIPE_BYTES:
        raise PayloadTooLarge(f"a recipe is at most {MAX_RECIPE_BYTES} bytes; got {len(body)}", loc=("body",))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecipe(f"the recipe is not UTF-8 text: {exc.reason} at byte {exc.start}", loc=("body",)) from None
    if not text.strip():
        raise InvalidRecipe("the request body is empty; send a recipe as YAML or JSON", loc=("body",))
    if "\x00" in text:
        raise InvalidRecipe("the recipe contains a NUL character", loc=("body",))
    try:
        if media_type in YAML_TYPES:
            return RecipeSpec.from_yaml(text), text
        if media_type in JSON_TYPES or media_type.endswith("+json"):
            return RecipeSpec.from_json(text), None
    except InputError as exc:
        raise _invalid(exc) from None
    raise InvalidInput(f"Content-Type {media_type or '(none)'!r} is not a recipe format; use "
                       f"{JSON_TYPES[0]} or {YAML_TYPES[0]}", loc=("header", "content-type"))


def _target_model(*, db: Session, spec: RecipeSpec, model_id: int | None) -> RegisteredModel | None:
    """The registered model to validate against: `model_id` if given, else the model the recipe names."""
    if model_id is not None:
        model = model_service.get(db=db, model_id=model_id, loc=("query", "model_id"))
        if spec.model is not None and spec.model not in (model.name, model.path):
            raise InvalidRecipe(f"the recipe names model {spec.model!r} but model_id {model_id} is {model.name!r}",
                                loc=("body", "model"))
        return model
    if spec.model is None:
        return None
    model = model_service.get_by_name(db=db, name=spec.model)
    if model is None:
        raise InvalidRecipe(f"the recipe names model {spec.model!r}, which is not registered; "
                            "register it with POST /v1/models first", loc=("body", "model"))
    return model


def create(*, db: Session, spec: RecipeSpec, yaml_source: str | None, model_id: int | None, actor: str,
           reason: str | None, commit: bool = True) -> tuple[Recipe, bool]:
    """Stores a recipe as the next version of its name; (recipe, created). Identical to the latest: no new row.

    `commit=False` only flushes: the caller's transaction (a job's completion) commits it or rolls it back.
    """
    model = _target_model(db=db, spec=spec, model_id=model_id)
    if model is not None:
        try:
            validate_for_model(spec, loader.load(model, loc=("body", "model")).model)
        except InputError as exc:
            raise _invalid(exc) from None
    digest = spec.content_hash()
    latest = db.scalar(select(Recipe).where(Recipe.name == spec.name).order_by(Recipe.version.desc()).limit(1))
    if latest is not None and latest.content_hash == digest and latest.model_id == (model.id if model else None):
        return latest, False
    recipe = Recipe(
        name=spec.name,
        version=(latest.version + 1) if latest is not None else 1,
        content_hash=digest,
        yaml_text=yaml_source if yaml_source is not None else spec.to_yaml(),
        spec=json.loads(spec.canonical_json()),
        description=spec.description or None,
        model_id=model.id if model is not None else None,
        created_by=actor,
    )
    db.add(recipe)
    db.flush()
    audit.record(db=db, actor=actor, action="recipe.create", object_type="recipe", object_id=recipe.id,
                 before=audit.snapshot(latest, exclude=("yaml_text",)) if latest is not None else None,
                 after=audit.snapshot(recipe, exclude=("yaml_text",)), reason=reason)
    if commit:
        db.commit()
    return recipe, True


def get(*, db: Session, recipe_id: int, loc: tuple = ()) -> Recipe:
    """A recipe by id, or NotFound."""
    recipe = db.get(Recipe, recipe_id)
    if recipe is None:
        raise NotFound("recipe", recipe_id, loc=loc)
    return recipe


def get_version(*, db: Session, name: str, version: int, loc: tuple = ("path", "version")) -> Recipe:
    """One version of a named recipe, or NotFound."""
    recipe = db.scalar(select(Recipe).where(Recipe.name == name, Recipe.version == version))
    if recipe is None:
        raise NotFound("recipe", f"{name!r} version {version}", loc=loc)
    return recipe


def latest_version(*, db: Session, name: str) -> int | None:
    """The highest version stored under a name."""
    return db.scalar(select(func.max(Recipe.version)).where(Recipe.name == name))


def list_recipes(*, db: Session, filters: RecipeFilters, page: PageParams) -> tuple[list[Recipe], int]:
    """Recipes by name and version, newest first."""
    stmt = select(Recipe)
    if filters.name is not None:
        stmt = stmt.where(Recipe.name == filters.name)
    if filters.content_hash is not None:
        stmt = stmt.where(Recipe.content_hash == filters.content_hash)
    if filters.model_id is not None:
        stmt = stmt.where(Recipe.model_id == filters.model_id)
    return paginate(db=db, stmt=stmt.order_by(Recipe.name, Recipe.version.desc()), page=page)


def diff(*, db: Session, name: str, from_version: int, to_version: int) -> RecipeDiff:
    """What changed between two versions of a recipe, field by field."""
    before = get_version(db=db, name=name, version=from_version, loc=("query", "from_version"))
    after = get_version(db=db, name=name, version=to_version, loc=("query", "to_version"))
    return RecipeDiff(name=name, from_version=from_version, to_version=to_version, from_hash=before.content_hash,
                      to_hash=after.content_hash, changes=diff_specs(before.spec, after.spec))
