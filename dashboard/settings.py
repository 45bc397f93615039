"""The dashboard's settings: where the control plane is and which key to call it with (`POPS_DASHBOARD_*`)."""
from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DashboardSettings(BaseSettings):
    """How the dashboard reaches the REST API; nothing else in `dashboard/` reads the environment."""

    model_config = SettingsConfigDict(env_prefix="POPS_DASHBOARD_", env_file=None, extra="ignore")

    api_url: str = Field("http://127.0.0.1:8000", description="Control plane base URL (without /v1).")
    api_key: SecretStr | None = Field(
        None, description="Default API key; a user may paste another in the sidebar (the server checks its role).")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Timeout of one API call.")

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https://, got {url!r}")
        return url.removesuffix("/v1")


def get_settings() -> DashboardSettings:
    """The dashboard settings from the environment (cheap: read on every script run)."""
    return DashboardSettings()
