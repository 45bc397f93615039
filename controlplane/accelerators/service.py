"""Accelerator profiles in the database, kept in step with the runtime's registry."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.accelerators.models import Accelerator, CompatibilityEntry, Support
from controlplane.accelerators.schemas import (
    AcceleratorFilters,
    CompatibilityEntryPublic,
    CompatibilityFilters,
    SyncResult,
)
from controlplane.audit import service as audit
from controlplane.errors import NotFound
from controlplane.pagination import PageParams, count, paginate
from runtime.accelerators import compatibility_matrix, list_profiles


def sync_from_runtime(*, db: Session, actor: str = "system") -> SyncResult:
    """Upserts every runtime profile and its matrix rows; audits only what changed."""
    profiles = {p.name: p for p in list_profiles()}
    rows_by_accelerator: dict[str, list[dict]] = {}
    for row in compatibility_matrix():
        rows_by_accelerator.setdefault(row["accelerator"], []).append(row)
    existing = {a.name: a for a in db.scalars(select(Accelerator))}
    for name, profile in profiles.items():
        accelerator = existing.get(name) or Accelerator(name=name)
        before = audit.snapshot(accelerator) if accelerator.id is not None else None
        before_entries = {(e.format, e.op_kind): (e.support, e.kernel, e.reason) for e in accelerator.entries}
        accelerator.description = profile.description
        accelerator.min_capability = profile.min_capability
        accelerator.reference_only = profile.reference_only
        wanted = {(r["format"], r["op_kind"]): (Support(r["support"]), r["kernel"], r["reason"])
                  for r in rows_by_accelerator.get(name, [])}
        by_key = {(e.format, e.op_kind): e for e in accelerator.entries}
        for key, (support, kernel, reason) in wanted.items():
            entry = by_key.get(key)
            if entry is None:
                accelerator.entries.append(CompatibilityEntry(format=key[0], op_kind=key[1], support=support,
                                                              kernel=kernel, reason=reason))
            else:
                entry.support, entry.kernel, entry.reason = support, kernel, reason
        for key, entry in by_key.items():
            if key not in wanted:
                accelerator.entries.remove(entry)
        db.add(accelerator)
        db.flush()
        if before is None or before_entries != wanted or before != audit.snapshot(accelerator):
            audit.record(db=db, actor=actor, action="accelerator.sync", object_type="accelerator",
                         object_id=accelerator.id, before=before,
                         after={**audit.snapshot(accelerator), "entries": len(wanted)},
                         reason="synced from runtime.accelerators")
    db.commit()
    return SyncResult(accelerators=len(profiles), entries=sum(len(v) for v in rows_by_accelerator.values()))


def get(*, db: Session, accelerator_id: int, loc: tuple = ()) -> Accelerator:
    """An accelerator by id, or NotFound."""
    accelerator = db.get(Accelerator, accelerator_id)
    if accelerator is None:
        raise NotFound("accelerator", accelerator_id, loc=loc)
    return accelerator


def get_by_name(*, db: Session, name: str) -> Accelerator | None:
    """An accelerator by profile name."""
    return db.scalar(select(Accelerator).where(Accelerator.name == name))


def list_accelerators(*, db: Session, filters: AcceleratorFilters, page: PageParams) -> tuple[list[Accelerator], int]:
    """Accelerators by name."""
    stmt = select(Accelerator)
    if filters.name is not None:
        stmt = stmt.where(Accelerator.name == filters.name)
    return paginate(db=db, stmt=stmt.order_by(Accelerator.name), page=page)


def matrix(*, db: Session, filters: CompatibilityFilters, page: PageParams) -> tuple[list[CompatibilityEntryPublic], int]:
    """Rows of the compatibility matrix: accelerator x format x op kind."""
    stmt = select(CompatibilityEntry, Accelerator.name).join(Accelerator)
    if filters.accelerator is not None:
        stmt = stmt.where(Accelerator.name == filters.accelerator)
    for column in ("format", "op_kind", "support"):
        value = getattr(filters, column)
        if value is not None:
            stmt = stmt.where(getattr(CompatibilityEntry, column) == value)
    stmt = stmt.order_by(Accelerator.name, CompatibilityEntry.op_kind, CompatibilityEntry.format)
    rows = db.execute(stmt.limit(page.limit).offset(page.offset)).all()
    return [
        CompatibilityEntryPublic(accelerator=name, format=e.format, op_kind=e.op_kind, support=e.support,
                                 kernel=e.kernel, reason=e.reason)
        for e, name in rows
    ], count(db=db, stmt=stmt)
