"""One typed settings object, read once from ``SYMBIONT_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYMBIONT_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL, e.g. postgresql://user@127.0.0.1:5432/symbiont",
    )
    mqtt_url: str | None = Field(default=None, description="mqtt://user:pass@host:1883")
    network_file: Path | None = None
    backfill_days: int = Field(default=400, ge=1)
    future_tolerance_s: float = Field(default=300.0, ge=0)
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    statement_grace: str = "3d"

    ingest_client_id: str = "symbiont-ingest"
    ingest_share_group: str = "symbiont"
    ingest_batch_readings: int = Field(default=20000, ge=1)
    ingest_batch_wait_ms: float = Field(default=20.0, ge=0)
    ingest_queue_messages: int = Field(default=60000, ge=100)
    metrics_port: int | None = None
    log_json: bool = False
    log_level: str = "INFO"

    webhook_secret: str | None = None
    smtp_url: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
