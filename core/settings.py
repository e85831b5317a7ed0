"""One typed settings object, read once from ``SYMBIONT_*`` environment variables."""

from __future__ import annotations

from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYMBIONT_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL, e.g. postgresql://user@127.0.0.1:5432/symbiont",
    )
    mqtt_url: str | None = Field(default=None, description="mqtt://user:pass@host:1883")
    network_file: Path | None = None
    backfill_days: int = Field(default=400, ge=1)
    # Raw readings older than this are dropped by whole month partitions (rules/retention.py);
    # unset keeps them for ever.  Window results, alerts and statements are always kept.
    readings_retention_days: int | None = Field(default=None, ge=1)
    future_tolerance_s: float = Field(default=300.0, ge=0)
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    statement_grace: str = "3d"

    ingest_client_id: str = "symbiont-ingest"
    ingest_share_group: str = "symbiont"
    # "5" (default: the in-flight window is bounded by Receive Maximum) or "3.1.1" (cheaper
    # per message; the broker's max_inflight_messages must then be configured)
    ingest_mqtt_protocol: Literal["5", "3.1.1"] = "5"
    ingest_batch_readings: int = Field(default=20000, ge=1)
    ingest_batch_wait_ms: float = Field(default=20.0, ge=0)
    ingest_pipeline: int = Field(default=2, ge=1, le=8)
    # The most messages ingest holds unacknowledged: MQTT 5 Receive Maximum (over MQTT 3.1.1
    # the broker's max_inflight_messages plays this part).
    ingest_queue_messages: int = Field(default=10000, ge=100, le=65535)
    # Whether this ingest process takes Sparkplug B (spBv1.0/...). A Sparkplug edge node's
    # messages must all reach one process, in order: with several ingest processes, let one
    # take Sparkplug.
    ingest_sparkplug: bool = True
    metrics_port: int | None = None  # ingest and rules serve Prometheus metrics here
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can scrape it
    # The API (api/): where `symbiont api` listens and how live streams behave.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_pool_size: int = Field(default=10, ge=1)
    live_stream_max_s: float = Field(default=900.0, gt=0)
    live_heartbeat_s: float = Field(default=15.0, gt=0)
    live_max_streams: int = Field(default=2000, ge=1)
    api_windows_cache_mb: float = Field(default=64.0, ge=0)
    log_json: bool = False
    log_level: str = "INFO"

    webhook_secret: str | None = None
    # Statement mail (notify/): sent only when smtp_url is set.
    #   smtp://[user[:password]@]host[:port]           port 25, STARTTLS if the server offers it
    #   smtp+starttls://[user[:password]@]host[:port]  port 587, STARTTLS required
    #   smtps://[user[:password]@]host[:port]          port 465, implicit TLS
    # user and password are percent-decoded; credentials are never sent unencrypted to a
    # host other than the loopback.
    smtp_url: str | None = Field(
        default=None, description="smtp://user:pass@host:port, smtp+starttls:// or smtps://"
    )
    smtp_from: str | None = Field(
        default=None,
        description="From of statement mail, e.g. 'Park billing <billing@park.example>';"
        " default: the SMTP user if it is an address, else symbiont@<this host's FQDN>",
    )

    # Integrations: where alert events go and how the outbox delivers them (see
    # notify/outbox.py).  webhook_secret above: whsec_<base64 key>, or any other text whose
    # UTF-8 bytes are the key; without one, webhooks go out unsigned.
    alert_webhooks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated http(s) URLs that receive every alert event",
    )
    alertmanager_url: str | None = Field(
        default=None, description="Prometheus Alertmanager base URL, e.g. http://127.0.0.1:9093"
    )
    alert_mqtt: bool = Field(
        default=True, description="Publish alert state retained on symbiont/alerts/{subject}"
    )
    notify_timeout_s: float = Field(default=10.0, gt=0)
    notify_max_age_h: float = Field(default=24.0, gt=0)
    notify_backoff_base_s: float = Field(default=10.0, gt=0)
    notify_backoff_cap_s: float = Field(default=3600.0, gt=0)
    notify_batch: int = Field(default=32, ge=1)
    notify_poll_s: float = Field(default=1.0, gt=0)
    alertmanager_resend_s: float = Field(default=60.0, gt=0)

    @field_validator("alert_webhooks", mode="before")
    @classmethod
    def _split_webhooks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("alert_webhooks")
    @classmethod
    def _check_webhooks(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
        return value

    @field_validator("alertmanager_url")
    @classmethod
    def _check_alertmanager(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.strip().rstrip("/")

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
            shown = f"{parts.scheme}://{parts.hostname or ''}"
            raise ValueError(f"not an smtp://, smtp+starttls:// or smtps:// URL: {shown!r}")
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError as exc:
            raise ValueError(f"bad port in SMTP URL: {exc}") from None
        return value

    @field_validator("smtp_from")
    @classmethod
    def _check_smtp_from(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        _, address = parseaddr(value)
        if "@" not in address or "\r" in value or "\n" in value:
            raise ValueError(f"not a mail address: {value!r}")
        return value

    @model_validator(mode="after")
    def _check_retention(self) -> Settings:
        keep = self.readings_retention_days
        if keep is not None and keep < self.backfill_days + 31:
            raise ValueError(
                f"SYMBIONT_READINGS_RETENTION_DAYS={keep} must be at least"
                f" SYMBIONT_BACKFILL_DAYS + 31 = {self.backfill_days + 31}"
            )
        return self


SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
