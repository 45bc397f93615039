"""Uploading corpora: parse and profile with the runtime, store content-addressed, then index."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.audit import service as audit
from controlplane.corpora.models import Corpus
from controlplane.corpora.schemas import CorpusFilters
from controlplane.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from controlplane.model_registry import loader
from controlplane.model_registry import service as model_service
from controlplane.pagination import PageParams, paginate
from runtime.corpora import Corpus as CorpusData
from runtime.corpora import coverage_profile
from runtime.errors import InputError

_CHUNK = 1 << 20


def corpus_dir(artifact_root: Path) -> Path:
    """Where corpora live: `<artifact_root>/corpora/<sha256 hex>.jsonl`."""
    return artifact_root / "corpora"


def _spool(upload: BinaryIO, *, dest: Path, max_bytes: int) -> int:
    """Copies an upload to `dest`, refusing more than `max_bytes`; returns the size."""
    size = 0
    with dest.open("wb") as out:
        while chunk := upload.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the corpus is larger than the {max_bytes}-byte limit", loc=("body", "file"))
            out.write(chunk)
    if size == 0:
        raise InvalidInput("the uploaded corpus file is empty", loc=("body", "file"))
    return size


def _parse(path: Path, *, name: str) -> CorpusData:
    try:
        return CorpusData.load(path, name=name)
    except InputError as exc:
        # Keep the runtime's ("line", n) but say it is about the uploaded file, never the temp path.
        raise InvalidInput("", errors=[
            {"loc": ("body", "file") + tuple(e["loc"][1:] if e["loc"][:1] == ("path",) else e["loc"]),
             "msg": str(e["msg"]).replace(str(path), "upload"), "type": e["type"]}
            for e in exc.errors
        ]) from None


def upload(*, db: Session, name: str, upload: BinaryIO, tokenizer_model_id: int, description: str | None,
           artifact_root: Path, max_bytes: int, actor: str, reason: str | None) -> tuple[Corpus, bool]:
    """Registers an uploaded JSONL corpus; (corpus, created). Nothing is stored when it is refused."""
    model = model_service.get(db=db, model_id=tokenizer_model_id, loc=("body", "tokenizer_model_id"))
    root = corpus_dir(artifact_root)
    root.mkdir(parents=True, exist_ok=True)
    spool = root / f".upload-{uuid.uuid4().hex}.jsonl"
    try:
        size = _spool(upload, dest=spool, max_bytes=max_bytes)
        data = _parse(spool, name=name)
        existing = db.scalar(select(Corpus).where(Corpus.name == name))
        if existing is not None:
            if existing.content_hash == data.content_hash and existing.tokenizer_model_id == model.id:
                return existing, False
            raise Conflict(f"corpus name {name!r} is taken by {existing.content_hash}; corpora are immutable, "
                           "upload the new content under a new name", loc=("body", "name"))
        try:
            profile = coverage_profile(data, loader.load(model, loc=("body", "tokenizer_model_id")).tokenizer)
        except InputError as exc:
            raise InvalidInput("", errors=[dict(e, loc=("body", "file") + tuple(e["loc"])) for e in exc.errors]) from None
        final = data.save(root / f"{data.content_hash.split(':', 1)[1]}.jsonl")  # temp name, then rename
    finally:
        spool.unlink(missing_ok=True)
    corpus = Corpus(
        name=name, content_hash=data.content_hash, uri=str(final), size_bytes=size, sample_count=len(data),
        coverage=profile.model_dump(mode="json"), tokenizer_model_id=model.id, description=description,
        created_by=actor,
    )
    db.add(corpus)
    db.flush()
    audit.record(db=db, actor=actor, action="corpus.create", object_type="corpus", object_id=corpus.id,
                 after=audit.snapshot(corpus), reason=reason)
    db.commit()
    return corpus, True


def get(*, db: Session, corpus_id: int, loc: tuple = ()) -> Corpus:
    """A corpus by id, or NotFound."""
    corpus = db.get(Corpus, corpus_id)
    if corpus is None:
        raise NotFound("corpus", corpus_id, loc=loc)
    return corpus


def list_corpora(*, db: Session, filters: CorpusFilters, page: PageParams) -> tuple[list[Corpus], int]:
    """Corpora, newest first."""
    stmt = select(Corpus)
    if filters.name is not None:
        stmt = stmt.where(Corpus.name == filters.name)
    if filters.content_hash is not None:
        stmt = stmt.where(Corpus.content_hash == filters.content_hash)
    if filters.tokenizer_model_id is not None:
        stmt = stmt.where(Corpus.tokenizer_model_id == filters.tokenizer_model_id)
    return paginate(db=db, stmt=stmt.order_by(Corpus.id.desc()), page=page)
