"""Uploading and listing corpora."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from controlplane.corpora import service
from controlplane.corpora.schemas import CorporaPublic, CorpusFilters, CorpusPublic
from controlplane.deps import AppSettings, CurrentKey, DbSession, Submitter, Viewer
from controlplane.fields import Id, IdPath, Name, OptionalReason, Text
from controlplane.pagination import Pagination

router = APIRouter(prefix="/corpora", tags=["corpora"])


@router.post("", response_model=CorpusPublic, status_code=status.HTTP_201_CREATED, dependencies=[Submitter],
             responses={200: {"model": CorpusPublic, "description": "Same name and content: the existing corpus."}})
def upload_corpus(
    db: DbSession,
    settings: AppSettings,
    caller: CurrentKey,
    response: Response,
    name: Annotated[Name, Form()],
    file: Annotated[UploadFile, File(description="JSONL: one {\"text\", \"slice\"?, \"tags\"?} object per line.")],
    tokenizer_model_id: Annotated[Id, Form(description="Registered model whose tokenizer measures lengths.")],
    description: Annotated[Text | None, Form(max_length=2000)] = None,
    reason: Annotated[OptionalReason, Form()] = None,
) -> CorpusPublic:
    """Stores a JSONL corpus content-addressed and profiles its coverage."""
    corpus, created = service.upload(
        db=db, name=name, upload=file.file, tokenizer_model_id=tokenizer_model_id, description=description,
        artifact_root=settings.artifact_root, max_bytes=settings.max_upload_bytes, actor=caller.owner, reason=reason,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return CorpusPublic.model_validate(corpus)


@router.get("", response_model=CorporaPublic, dependencies=[Viewer])
def list_corpora(db: DbSession, page: Pagination, filters: Annotated[CorpusFilters, Query()]) -> CorporaPublic:
    """Corpora, newest first."""
    rows, count = service.list_corpora(db=db, filters=filters, page=page)
    return CorporaPublic(data=[CorpusPublic.model_validate(r) for r in rows], count=count)


@router.get("/{corpus_id}", response_model=CorpusPublic, dependencies=[Viewer])
def get_corpus(corpus_id: IdPath, db: DbSession) -> CorpusPublic:
    """One corpus with its coverage profile."""
    return CorpusPublic.model_validate(service.get(db=db, corpus_id=corpus_id))
