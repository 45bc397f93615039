"""What `pops serve` is told: where engines come from, how much traffic is shadowed, the sample queue's bounds."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ServeConfig(BaseModel):
    """Serving settings; either a control plane (engines follow the endpoint's deployments) or local engine folders."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field("default", min_length=1, max_length=128,
                          description="Endpoint name: what `model` means in requests and whose deployments are served.")
    control_plane_url: str | None = Field(
        None, description="Control plane base URL (e.g. http://127.0.0.1:8000); None serves local engines only.")
    api_key: str | None = Field(None, repr=False, description="Control plane API key (submitter role or higher).")
    engine_paths: list[Path] = Field(
        default_factory=list,
        description="Local engine folders. Standalone: the first is active. With a control plane: folders to use "
                    "for the engines of the same content hash instead of the registered URI.")
    canary_path: Path | None = Field(None, description="Standalone: an engine folder serving `canary_share`.")
    canary_share: float = Field(0.0, ge=0.0, lt=1.0, description="Standalone: the canary's share of requests.")
    shadow_path: Path | None = Field(None, description="Standalone: an engine compared on every request, serving none.")
    reference_path: Path | None = Field(
        None, description="Reference model folder for shadow canaries (default: each engine's source model).")
    sample_share: float = Field(0.01, ge=0.0, le=1.0,
                                description="Share of requests served by the active engine re-run in reference precision.")
    canary_sample_share: float = Field(0.1, ge=0.0, le=1.0,
                                       description="Share of requests served by the canary re-run in reference precision.")
    shadow_queue_size: int = Field(64, ge=1, le=100_000,
                                   description="Shadow jobs waiting for the worker; more are dropped and counted.")
    sample_buffer_size: int = Field(10_000, ge=1, le=10_000_000,
                                    description="Samples held while the control plane is unreachable; the oldest "
                                                "past the bound are dropped and counted.")
    batch_size: int = Field(100, ge=1, le=10_000, description="Most samples in one POST to the control plane.")
    flush_interval_s: float = Field(2.0, gt=0.0, le=3600.0, description="Longest a sample waits for a fuller batch.")
    poll_interval_s: float = Field(5.0, gt=0.0, le=3600.0, description="Seconds between deployment polls.")
    request_timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="Timeout of one control plane call.")
    max_tokens_limit: int = Field(1024, ge=1, le=65_536, description="Largest `max_tokens` a request may ask for.")
    device: str = Field("cpu", description="torch device the engines and the reference run on.")
    fuse_siblings: bool | None = Field(
        None, description="Run sibling ops of one format (q/k/v, gate/up) as one GEMM each; None: on CUDA only "
                          "(runtime.modules.fused_linear). False is the escape hatch should a fused engine misbehave.")
    samples_out: Path | None = Field(None, description="Also append every canary sample to this JSONL file.")

    @field_validator("engine_paths", "canary_path", "shadow_path")
    @classmethod
    def _engine_folders(cls, value):
        for path in value if isinstance(value, list) else [value] if value is not None else []:
            if not (path / "manifest.json").is_file():
                raise ValueError(f"no engine at {str(path)!r} (manifest.json missing); give a folder `pops build` wrote")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ServeConfig":
        if self.control_plane_url is None:
            if not self.engine_paths:
                raise ValueError("engine_paths: give at least one engine folder, or a control_plane_url")
            if self.canary_share > 0.0 and self.canary_path is None:
                raise ValueError("canary_share is set but canary_path is not; give the canary engine folder")
        else:
            if not self.api_key:
                raise ValueError("api_key is required with a control_plane_url (a submitter key posts samples)")
            if self.canary_path is not None or self.shadow_path is not None:
                raise ValueError("canary_path/shadow_path are standalone options; with a control plane the "
                                 "endpoint's deployments decide the canary and the shadow")
        return self

    @property
    def standalone(self) -> bool:
        return self.control_plane_url is None
