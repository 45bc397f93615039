"""Structural diff of two canonical recipe documents, path by path."""
from __future__ import annotations

from typing import Any

from controlplane.recipes.schemas import RecipeChange


def diff(before: Any, after: Any, path: tuple = ()) -> list[RecipeChange]:
    """Changes turning `before` into `after`: mappings by key, lists by index (rule order matters)."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[RecipeChange] = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in after:
                changes.append(RecipeChange(path=_dotted(path + (key,)), op="removed", before=before[key]))
            elif key not in before:
                changes.append(RecipeChange(path=_dotted(path + (key,)), op="added", after=after[key]))
            else:
                changes.extend(diff(before[key], after[key], path + (key,)))
        return changes
    if isinstance(before, list) and isinstance(after, list):
        changes = []
        for i in range(max(len(before), len(after))):
            if i >= len(after):
                changes.append(RecipeChange(path=_dotted(path + (i,)), op="removed", before=before[i]))
            elif i >= len(before):
                changes.append(RecipeChange(path=_dotted(path + (i,)), op="added", after=after[i]))
            else:
                changes.extend(diff(before[i], after[i], path + (i,)))
        return changes
    if before != after:
        return [RecipeChange(path=_dotted(path), op="changed", before=before, after=after)]
    return []


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<root>"
