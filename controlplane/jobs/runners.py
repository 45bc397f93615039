"""Running one job: load its inputs, call the runtime, and store its result rows with its completion.

No database transaction stays open while the runtime works (progress writes commit on their own),
and the result rows are written in the same transaction that marks the job succeeded. Artifacts are
content-addressed and written under a temporary name, then renamed: a job retried after a crash
finds what an earlier attempt finished, or redoes the work.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controlplane import tracking
from controlplane.accelerators.models import Accelerator
from controlplane.calibrations.models import Calibration
from controlplane.corpora.models import Corpus
from controlplane.engines.models import Engine
from controlplane.evaluations.models import Evaluation, Verdict
from controlplane.jobs import service
from controlplane.jobs.models import Job, JobKind
from controlplane.jobs.schemas import BuildJobCreate, CalibrateJobCreate, EvaluateJobCreate, SearchJobCreate
from controlplane.model_registry.models import RegisteredModel
from controlplane.recipes.models import Recipe
from controlplane.settings import Settings
from runtime.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a runner needs: the session, the claimed job, settings, progress and the MLflow run."""

    db: Session
    job: Job
    settings: Settings
    progress: service.ProgressWriter
    run: tracking.JobRun


@dataclass
class Outcome:
    """What a runner made: a function adding its result rows (in the completing transaction), and a summary."""

    rows: Callable[[Session], dict[str, Any]]  # adds or finds the result rows; returns their ids
    summary: str


def local_path(uri: str) -> Path:
    """A local filesystem path from a `file://` URI or a plain path."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)


def _load(db: Session, model: type, object_id: int, label: str) -> Any:
    row = db.get(model, object_id)
    if row is None:  # deleted after the job was queued
        raise InputError(f"{label} {object_id} no longer exists", loc=("params", f"{label}_id"))
    return row


def _write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Writes a folder under a temporary name beside `final`, then renames it; an existing `final` wins."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the API and other hosts read artifacts too
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():  # lost a race only if the other writer finished
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _find_or_add(db: Session, model: type, content_hash: str, make: Callable[[], Any]) -> Any:
    """The row with this content hash, added if missing; a concurrent insert of the same hash is found, not an error."""
    row = db.scalar(select(model).where(model.content_hash == content_hash))
    if row is not None:
        return row
    try:
        with db.begin_nested():
            row = make()
            db.add(row)
        return row
    except IntegrityError:
        return db.scalar(select(model).where(model.content_hash == content_hash))


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _device(job: Job) -> str:
    """CUDA on a GPU host for jobs of the gpu queue; the CPU reference path otherwise."""
    from controlplane.celery_app import GPU_QUEUE

    if job.queue == GPU_QUEUE:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


# --- calibrate -------------------------------------------------------------------------------------


def run_calibrate(ctx: JobContext) -> Outcome:
    """Runs the corpus through the model and stores the statistics, content-addressed."""
    from runtime.calibration import calibrate
    from runtime.corpora import Corpus as RuntimeCorpus
    from runtime.models import load_model
    from runtime.recipes import Recipe as RuntimeRecipe

    p = CalibrateJobCreate.model_validate(ctx.job.params)
    model_row = _load(ctx.db, RegisteredModel, p.model_id, "model")
    recipe_row = _load(ctx.db, Recipe, p.recipe_id, "recipe")
    corpus_row = _load(ctx.db, Corpus, p.corpus_id, "corpus")
    ctx.db.commit()
    ctx.run.log_params({"kind": "calibrate", "model_hash": model_row.content_hash,
                        "recipe_hash": recipe_row.content_hash, "corpus_hash": corpus_row.content_hash,
                        "samples": p.samples, "seq_len": p.seq_len})
    recipe = RuntimeRecipe.from_dict(recipe_row.spec)
    corpus = RuntimeCorpus.load(local_path(corpus_row.uri), name=corpus_row.name)
    ctx.progress.stage("loading model", 0.0, 0.1)
    loaded = load_model(model_row.path)
    ctx.progress.stage("calibrating", 0.1, 0.9)
    calibration = calibrate(loaded.model, loaded.tokenizer, corpus, recipe, samples=p.samples, seq_len=p.seq_len,
                            model_hash=loaded.content_hash, progress=ctx.progress)
    ctx.progress.stage("saving statistics", 0.9, 0.95)
    digest = calibration.content_hash
    folder = _write_atomically(ctx.settings.artifact_root / "calibrations" / digest.split(":")[-1],
                               calibration.save)
    summary = calibration_summary(calibration)
    ctx.run.log_params({"observer": summary["observer"], "tokens": summary["tokens"]})
    ctx.run.log_metrics(summary, prefix="calibration.")
    ctx.run.log_dict({"content_hash": digest, **summary, "meta": calibration.metadata}, "calibration_summary.json")

    def rows(db: Session) -> dict[str, Any]:
        row = _find_or_add(db, Calibration, digest, lambda: Calibration(
            content_hash=digest, model_id=p.model_id, recipe_id=p.recipe_id, corpus_id=p.corpus_id,
            stats_uri=folder.as_uri(), samples=summary["samples"], seq_len=summary["seq_len"], summary=summary))
        return {"calibration_id": row.id, "content_hash": digest}

    return Outcome(rows, f"calibrated {summary['tensors']} tensors and {summary['kv_layers']} KV layers "
                         f"on {summary['samples']} samples ({summary['tokens']} tokens)")


def calibration_summary(calibration: Any) -> dict[str, Any]:
    """What a reader wants first from a calibration: its size, its ranges and its outliers."""
    stats = list(calibration.tensors.values())
    amax = sorted(s.amax for s in stats)
    meta = calibration.meta
    return {
        "tensors": len(stats),
        "kv_layers": len(calibration.kv_heads),
        "samples": meta.samples,
        "seq_len": meta.seq_len,
        "tokens": meta.tokens,
        "observer": meta.observer,
        "amax_max": amax[-1] if amax else 0.0,
        "amax_median": amax[len(amax) // 2] if amax else 0.0,
        "outlier_channels": sum(len(s.outlier_channels) for s in stats),
        "tensors_with_outliers": sum(1 for s in stats if s.outlier_channels),
    }


# --- build -----------------------------------------------------------------------------------------


def run_build(ctx: JobContext) -> Outcome:
    """Quantizes the model by its plan into a content-addressed engine folder (found, not rebuilt, if it exists)."""
    from runtime.accelerators import get_profile
    from runtime.calibration import Calibration as RuntimeCalibration
    from runtime.engines import build
    from runtime.recipes import Recipe as RuntimeRecipe

    p = BuildJobCreate.model_validate(ctx.job.params)
    model_row = _load(ctx.db, RegisteredModel, p.model_id, "model")
    recipe_row = _load(ctx.db, Recipe, p.recipe_id, "recipe")
    accelerator_row = _load(ctx.db, Accelerator, p.accelerator_id, "accelerator")
    calibration_row = _load(ctx.db, Calibration, p.calibration_id, "calibration") if p.calibration_id else None
    ctx.db.commit()
    ctx.run.log_params({"kind": "build", "model_hash": model_row.content_hash,
                        "recipe_hash": recipe_row.content_hash, "accelerator": accelerator_row.name,
                        "calibration_hash": calibration_row.content_hash if calibration_row else None})
    recipe = RuntimeRecipe.from_dict(recipe_row.spec)
    profile = get_profile(accelerator_row.name)
    calibration = RuntimeCalibration.load(local_path(calibration_row.stats_uri)) if calibration_row else None
    ctx.progress.stage("building", 0.05, 0.95)
    engine = build(model_row.path, recipe, profile, out_root=ctx.settings.artifact_root / "engines",
                   calibration=calibration, progress=ctx.progress)
    built_from = engine.manifest["model"]["content_hash"]
    if built_from != model_row.content_hash:
        raise InputError(f"model {model_row.id}'s folder changed since it was registered "
                         f"({model_row.content_hash} then, {built_from} now); register it again",
                         loc=("params", "model_id"))
    size = _folder_bytes(engine.path)
    ctx.run.log_metrics({"bytes": engine.manifest.get("bytes", {}),
                         "casts_per_forward": engine.manifest.get("casts_per_forward", {}),
                         "fallbacks": len(engine.manifest.get("fallbacks", []))})
    ctx.run.log_dict(engine.manifest, "manifest.json")

    def rows(db: Session) -> dict[str, Any]:
        row = _find_or_add(db, Engine, engine.engine_id, lambda: Engine(
            content_hash=engine.engine_id, uri=engine.path.as_uri(), manifest=engine.manifest, model_id=p.model_id,
            recipe_id=p.recipe_id, accelerator_id=p.accelerator_id, calibration_id=p.calibration_id, size_bytes=size))
        return {"engine_id": row.id, "content_hash": engine.engine_id}

    return Outcome(rows, f"built engine {engine.engine_id} ({size} bytes)")


# --- evaluate --------------------------------------------------------------------------------------


def run_evaluate(ctx: JobContext) -> Outcome:
    """Measures the engine against its model in reference precision and stores the report."""
    from runtime.corpora import Corpus as RuntimeCorpus
    from runtime.engines import load_engine
    from runtime.evaluation import evaluate
    from runtime.models import load_model

    p = EvaluateJobCreate.model_validate(ctx.job.params)
    engine_row = _load(ctx.db, Engine, p.engine_id, "engine")
    corpus_row = _load(ctx.db, Corpus, p.corpus_id, "corpus")
    model_row = _load(ctx.db, RegisteredModel, engine_row.model_id, "model")
    accelerator_row = _load(ctx.db, Accelerator, engine_row.accelerator_id, "accelerator")
    ctx.db.commit()
    ctx.run.log_params({"kind": "evaluate", "engine": engine_row.content_hash,
                        "model_hash": model_row.content_hash, "recipe_hash": engine_row.manifest["recipe"]["content_hash"],
                        "corpus_hash": corpus_row.content_hash, "accelerator": accelerator_row.name,
                        "max_samples": p.max_samples, "seq_len": p.seq_len})
    corpus = RuntimeCorpus.load(local_path(corpus_row.uri), name=corpus_row.name)
    device = _device(ctx.job)
    ctx.progress.stage("loading models", 0.0, 0.1)
    reference = load_model(model_row.path)
    if reference.content_hash != engine_row.manifest["model"]["content_hash"]:
        raise InputError(f"model {model_row.id}'s folder is not the one engine {engine_row.id} was built from "
                         f"({engine_row.manifest['model']['content_hash']}); the reference would be wrong",
                         loc=("params", "engine_id"))
    candidate = load_engine(local_path(engine_row.uri), device=device)
    reference.model.to(device)
    ctx.progress.stage("evaluating", 0.1, 0.9)
    report = evaluate(reference.model, candidate.model, reference.tokenizer, corpus, gates=p.gates,
                      max_samples=p.max_samples, seq_len=p.seq_len, progress=ctx.progress)
    document = report.model_dump(mode="json")
    ctx.progress.stage("saving report", 0.9, 0.95)
    report_dir = _write_atomically(
        ctx.settings.artifact_root / "evaluations" / f"job-{ctx.job.id}",
        lambda tmp: (tmp / "report.json").write_text(json.dumps(document, indent=2)),
    )
    ctx.run.log_metrics(document["metrics"])
    ctx.run.log_metrics(document.get("by_slice", {}), prefix="slice.")
    ctx.run.log_metrics({"passed": report.passed, "sqnr_min_db": report.sqnr_min_db})
    ctx.run.log_metrics(document.get("layers", {}), prefix="sqnr_db.")
    ctx.run.log_dict(document, "evaluation_report.json")
    verdict = Verdict.passed if report.passed else Verdict.failed

    def rows(db: Session) -> dict[str, Any]:
        row = Evaluation(engine_id=p.engine_id, corpus_id=p.corpus_id, metrics=document["metrics"],
                         by_slice=document.get("by_slice", {}), by_bucket=document.get("by_bucket", {}),
                         gates=document.get("gate_results", []), verdict=verdict,
                         report_uri=(report_dir / "report.json").as_uri())
        db.add(row)
        db.flush()
        return {"evaluation_id": row.id, "verdict": verdict.value}

    metrics = document["metrics"]
    return Outcome(rows, f"evaluated on {report.samples} samples: kl_mean {metrics['kl_mean']:.4g}, "
                         f"top1_agreement {metrics['top1_agreement']:.4f}; gates {verdict.value}")


# --- search ----------------------------------------------------------------------------------------


def run_search(ctx: JobContext) -> Outcome:
    """Searches a mixed-precision recipe on the corpus and stores it as a versioned recipe (reused if identical)."""
    from runtime.accelerators import get_profile
    from runtime.corpora import Corpus as RuntimeCorpus
    from runtime.models import load_model
    from runtime.search import DEFAULT_CANDIDATES, Budget, search

    p = SearchJobCreate.model_validate(ctx.job.params)
    model_row = _load(ctx.db, RegisteredModel, p.model_id, "model")
    corpus_row = _load(ctx.db, Corpus, p.corpus_id, "corpus")
    accelerator_row = _load(ctx.db, Accelerator, p.accelerator_id, "accelerator")
    ctx.db.commit()
    budget_in = p.budget.model_dump(exclude_none=True)
    ctx.run.log_params({"kind": "search", "model_hash": model_row.content_hash, "corpus_hash": corpus_row.content_hash,
                        "accelerator": accelerator_row.name, "granularity": p.granularity,
                        "candidates": ",".join(p.candidates) if p.candidates else None, "samples": p.samples,
                        "seq_len": p.seq_len, "measure": p.measure,
                        **{f"budget.{k}": v for k, v in budget_in.items()}})
    try:
        budget = Budget(**budget_in)
    except InputError as exc:  # the schema checks these too; keep the field path under params
        raise InputError([dict(e, loc=("params",) + e["loc"]) for e in exc.errors]) from None
    profile = get_profile(accelerator_row.name)
    corpus = RuntimeCorpus.load(local_path(corpus_row.uri), name=corpus_row.name)
    ctx.progress.stage("loading model", 0.0, 0.05)
    loaded = load_model(model_row.path)
    if loaded.content_hash != model_row.content_hash:
        raise InputError(f"model {model_row.id}'s folder changed since it was registered "
                         f"({model_row.content_hash} then, {loaded.content_hash} now); register it again",
                         loc=("params", "model_id"))
    ctx.progress.stage("measuring sensitivity", 0.05, 0.9)
    result = search(loaded.model, loaded.tokenizer, corpus, profile=profile, budget=budget,
                    granularity=p.granularity, candidates=p.candidates or DEFAULT_CANDIDATES, samples=p.samples,
                    seq_len=p.seq_len, measure=p.measure, model_name=model_row.name,
                    name=p.name or f"search-{model_row.name}-{p.granularity}"[:128], progress=ctx.progress)
    ctx.progress.stage("allocating", 0.9, 0.95)
    spec, metrics = result.recipe, result.metrics()
    digest = spec.content_hash()
    ctx.run.log_params({"recipe_hash": digest, "recipe_name": spec.name})
    ctx.run.log_metrics(metrics)
    ctx.run.log_dict(result.to_dict(), "search_result.json")
    actor = f"job:{ctx.job.id}"

    def rows(db: Session) -> dict[str, Any]:
        from controlplane.recipes import service as recipes

        # Identical content under this name for this model: reuse it (a retried or repeated search).
        row = db.scalar(select(Recipe).where(Recipe.name == spec.name, Recipe.content_hash == digest,
                                             Recipe.model_id == p.model_id).order_by(Recipe.version.desc()).limit(1))
        created = False
        if row is None:
            row, created = recipes.create(db=db, spec=spec, yaml_source=None, model_id=p.model_id, actor=actor,
                                          reason=f"searched by job {ctx.job.id} ({budget.label()} on "
                                                 f"{accelerator_row.name})", commit=False)
        return {"recipe_id": row.id, "recipe_name": row.name, "recipe_version": row.version,
                "content_hash": row.content_hash, "created": created, "metrics": metrics}

    latency = (f", predicted {metrics['predicted_latency_us']:.1f} µs/token on {accelerator_row.name}"
               if "predicted_latency_us" in metrics else "")
    return Outcome(rows, f"searched recipe {spec.name} for {budget.label()}: {metrics['bits_per_weight']:.3f} "
                         f"bits/weight, predicted KL {metrics['predicted_kl']:.3g}{latency}")


RUNNERS: dict[JobKind, Callable[[JobContext], Outcome]] = {
    JobKind.calibrate: run_calibrate,
    JobKind.build: run_build,
    JobKind.evaluate: run_evaluate,
    JobKind.search: run_search,
}


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth a retry: the database or the broker was briefly unreachable."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    return (OperationalError, InterfaceError, DisconnectionError, BrokerError, RedisConnectionError,
            RedisTimeoutError, ConnectionError, TimeoutError)


TRANSIENT_ERRORS = _transient_errors()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def execute(*, db: Session, job_id: int, settings: Settings) -> dict[str, Any] | None:
    """Runs one delivery of a job's task; returns the job's result, or None when it failed.

    Transient errors propagate (the task retries with backoff, the job stays running); any other
    error fails the job with a message naming it. A job that already finished is left as it is.
    """
    job = service.claim(db=db, job_id=job_id)
    if job is None:
        finished = db.get(Job, job_id)
        log.info("job %s already %s; delivery ignored", job_id, finished.status.value)
        return finished.result
    run = tracking.start_job_run(tracking_uri=settings.mlflow_tracking_uri, job_id=job.id, kind=job.kind.value,
                                 run_id=job.mlflow_run_id)
    if run.run_id != job.mlflow_run_id:
        service.set_run_id(db=db, job_id=job.id, run_id=run.run_id)
    ctx = JobContext(db=db, job=job, settings=settings, progress=service.ProgressWriter(db=db, job_id=job.id), run=run)
    try:
        outcome = RUNNERS[job.kind](ctx)
        ctx.progress.stage("recording results", 0.95, 1.0)
        run.finish(succeeded=True)  # before the final transaction: no lock is held across an MLflow call
        # One transaction: the result rows and the job's completion commit together or not at all.
        result = outcome.rows(db)
        if not service.complete(db=db, job_id=job.id, result=result, message=_with_tracking(outcome.summary, run)):
            db.rollback()  # another delivery of this job finished first; its rows stand, ours are dropped
            log.warning("job %s was completed by another delivery; this one's rows were discarded", job.id)
            return db.get(Job, job_id, populate_existing=True).result
        db.commit()
        return result
    except TRANSIENT_ERRORS:
        db.rollback()
        raise
    except Exception as exc:
        db.rollback()
        if not isinstance(exc, InputError):
            log.exception("job %s (%s) failed", job.id, job.kind.value)
        run.finish(succeeded=False)
        service.fail(db=db, job_id=job.id, error=_describe(exc), message=_with_tracking("failed", run))
        return None


def _with_tracking(message: str, run: tracking.JobRun) -> str:
    """The job message, saying so when MLflow tracking failed (the job itself did not)."""
    return message if run.failure is None else f"{message}; tracking failed: {run.failure}"
