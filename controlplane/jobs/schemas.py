"""Job schemas: what a caller submits for each kind of job, and what it reads back."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from controlplane.fields import Id, OptionalReason
from controlplane.jobs.models import JobKind, JobStatus
from controlplane.pagination import Page
from runtime.evaluation.gates import Gate

IDEMPOTENCY_KEY_MAX = 255


class JobParams(BaseModel):
    """Fields common to every job request; `reason` goes to the audit log, not into the job's params."""

    model_config = ConfigDict(extra="forbid")

    reason: OptionalReason = None

    def job_params(self) -> dict[str, Any]:
        """The parameters that define the job's work (an idempotent retry must repeat them exactly)."""
        return self.model_dump(mode="json", exclude={"reason"})


class CalibrateJobCreate(JobParams):
    model_id: Id = Field(description="The registered model to run the corpus through.")
    recipe_id: Id = Field(description="The recipe whose formats the scales are for.")
    corpus_id: Id = Field(description="The calibration corpus.")
    samples: int | None = Field(None, ge=1, le=100_000,
                                description="Corpus samples to run (the first N); default: the recipe's, else 64.")
    seq_len: int | None = Field(None, ge=8, le=32_768,
                                description="Tokens per sample; default: the recipe's, else 256.")


class BuildJobCreate(JobParams):
    model_id: Id = Field(description="The registered model to quantize.")
    recipe_id: Id = Field(description="The recipe to build.")
    accelerator_id: Id = Field(description="The accelerator profile the engine is built for.")
    calibration_id: Id | None = Field(
        None, description="Calibrated scales; required when the recipe has static activation or KV-cache scales."
    )


class EvaluateJobCreate(JobParams):
    engine_id: Id = Field(description="The engine to measure against its model in reference precision.")
    corpus_id: Id = Field(description="The evaluation corpus.")
    gates: list[Gate] = Field(default_factory=list, max_length=100,
                              description="Thresholds deciding pass or fail, overall or per slice / length bucket.")
    max_samples: int = Field(64, ge=1, le=100_000, description="Corpus samples to evaluate (the first N).")
    seq_len: int = Field(256, ge=8, le=32_768, description="Tokens per sample (longer samples are truncated).")


JOB_REQUESTS: dict[JobKind, type[JobParams]] = {
    JobKind.calibrate: CalibrateJobCreate,
    JobKind.build: BuildJobCreate,
    JobKind.evaluate: EvaluateJobCreate,
}


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: JobKind
    status: JobStatus
    progress: float = Field(description="0..1")
    message: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None = Field(description="Ids of the rows the job made, e.g. `{engine_id: 3}`.")
    error: str | None
    idempotency_key: str | None
    attempts: int
    queue: str
    celery_task_id: str | None
    mlflow_run_id: str | None
    submitted_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(Page[JobPublic]):
    pass


class JobFilters(BaseModel):
    kind: JobKind | None = None
    status: JobStatus | None = None
    submitted_by: str | None = Field(None, max_length=128)
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None
