"""Job schemas: what a caller submits for each kind of job, and what it reads back."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from controlplane.fields import Id, Name, OptionalReason
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


class SearchBudget(BaseModel):
    """Exactly one of: average stored bits per weight, total stored bytes, or a batch-1 decode latency."""

    model_config = ConfigDict(extra="forbid")

    bits_per_weight: float | None = Field(None, gt=0, le=32, description="Average stored bits per searched weight.")
    total_bytes: int | None = Field(None, gt=0, le=2**50, description="Total stored bytes of the searched ops.")
    latency_us: float | None = Field(
        None, gt=0, le=1e9,
        description="Batch-1 decode µs per token of the searched ops, from the accelerator's latency model.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "SearchBudget":
        if sum(v is not None for v in (self.bits_per_weight, self.total_bytes, self.latency_us)) != 1:
            raise ValueError("give exactly one of bits_per_weight, total_bytes and latency_us")
        return self


class SearchJobCreate(JobParams):
    model_id: Id = Field(description="The registered model to search a recipe for.")
    corpus_id: Id = Field(description="The calibration corpus the sensitivity is measured on.")
    accelerator_id: Id = Field(description="The accelerator: only formats its kernels run are candidates.")
    budget: SearchBudget
    granularity: Literal["op", "channel"] = Field(
        "channel", description="One format per linear op, or per output feature (mixed layers).")
    candidates: list[str] | None = Field(
        None, min_length=1, max_length=16,
        description="Candidate formats (runtime.search.CANDIDATES); default int4_g128, int4_g128_asym, int8, "
                    "fp8_e4m3; bf16 (keep wide) is always one.")
    samples: int = Field(64, ge=1, le=4096, description="Corpus samples the sensitivity runs (the first N).")
    seq_len: int = Field(128, ge=8, le=4096, description="Tokens per sample.")
    measure: Literal["none", "cheapest", "all"] = Field(
        "cheapest", description="Direct KL measurements that calibrate the Fisher proxy per op.")
    name: Name | None = Field(None, description="Recipe name; default search-<model>-<granularity>.")

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, value: list[str] | None) -> list[str] | None:
        from runtime.search.candidates import CANDIDATES

        if value is not None:
            unknown = [c for c in value if c not in CANDIDATES]
            if unknown:
                raise ValueError(f"unknown candidate formats {unknown}; known: {', '.join(CANDIDATES)}")
            if len(set(value)) != len(value):
                raise ValueError("candidates are listed more than once")
        return value


JOB_REQUESTS: dict[JobKind, type[JobParams]] = {
    JobKind.calibrate: CalibrateJobCreate,
    JobKind.build: BuildJobCreate,
    JobKind.evaluate: EvaluateJobCreate,
    JobKind.search: SearchJobCreate,
}


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: JobKind
    status: JobStatus
    progress: float = Field(description="0..1")
    message: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None = Field(
        description="Ids of the rows the job made, e.g. `{engine_id: 3}`; a search adds its metrics.")
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
