"""Recipe schemas. A recipe is submitted as its own YAML or JSON document (runtime.recipes.Recipe)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from controlplane.fields import Id, Text
from controlplane.pagination import Page

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
JSON_TYPES = ("application/json",)
MAX_RECIPE_BYTES = 1024 * 1024


class RecipePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    version: int
    content_hash: str
    description: str | None
    model_id: int | None
    yaml_text: str
    spec: dict[str, Any]
    created_at: datetime
    created_by: str


class RecipesPublic(Page[RecipePublic]):
    pass


class RecipeFilters(BaseModel):
    name: Text | None = None
    content_hash: Text | None = None
    model_id: Id | None = None


class RecipeChange(BaseModel):
    path: str
    op: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None


class RecipeDiff(BaseModel):
    name: str
    from_version: int
    to_version: int
    from_hash: str
    to_hash: str
    changes: list[RecipeChange]
