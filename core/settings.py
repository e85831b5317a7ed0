"""One typed settings object, read once from ``SYMBIONT_*`` environment variables."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


@dataclass(frozen=True)
class MqttTls:
    """The files a TLS connection to the broker uses (``None``: the default)."""

    ca_file: Path | None = None  # None: the system's trusted CAs
    cert_file: Path | None = None  # a client certificate (PEM), its key in it or in key_file
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A client context: the broker's certificate and host name are verified, TLS 1.2+.

        A file that cannot be read or used raises ``ValueError`` naming the setting.
        """
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"SYMBIONT_MQTT_CA_FILE={self.ca_file}: {_reason(exc)}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"SYMBIONT_MQTT_CERT_FILE={self.cert_file}"
                    + (f", SYMBIONT_MQTT_KEY_FILE={self.key_file}" if self.key_file else "")
                    + f": {_reason(exc)}"
                ) from None
        return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not usable ({exc.reason or exc})"
    return exc.strerror or str(exc)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYMBIONT_", extra="ignore")

    # Where the data lives and comes from.
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL, e.g. `postgresql://symbiont:secret@db:5432/symbiont`",
    )
    mqtt_url: str | None = Field(
        default=None,
        description="The broker, `mqtt://user:pass@host:1883` (`mqtts://` for TLS)",
    )
    # TLS towards the broker (an mqtts:// URL).
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="The CA certificate(s) the broker's certificate is verified with (PEM);"
        " unset: the system's trusted CAs. The broker's host name is always checked",
    )
    mqtt_cert_file: Path | None = Field(
        default=None,
        description="A client certificate (PEM) for a broker that asks for one",
    )
    mqtt_key_file: Path | None = Field(
        default=None,
        description="The key of `SYMBIONT_MQTT_CERT_FILE`, unless it is in that file",
    )

    # What readings are accepted, and how long they are kept.
    backfill_days: int = Field(
        default=400,
        ge=1,
        description="Readings older than this many days are rejected (`too_old`); also the"
        " longest silence of a meter interpolated across",
    )
    readings_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Raw readings (and rejected messages) older than this many days are dropped"
        " by whole month partitions, hourly; at least `SYMBIONT_BACKFILL_DAYS` + 31. Unset:"
        " kept for ever. Windows, alerts and statements are always kept",
    )
    future_tolerance_s: float = Field(
        default=300.0,
        ge=0,
        description="Readings more than this many seconds in the future are rejected (`future`)",
    )
    max_payload_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Larger messages are rejected (`too_large`)",
    )
    statement_grace: str = Field(
        default="3d",
        description="A month's statements are issued this long after it ends (`3d`, `12h`),"
        " once their data is complete",
    )

    # The rules engine.
    rules_pass_interval_s: float = Field(
        default=0.25,
        ge=0,
        description="The rules engine starts a pass at most this often, in seconds: what ingest"
        " marks meanwhile is processed together, so many meters reading rarely cost one pass,"
        " not one each",
    )

    # Ingest.
    ingest_client_id: str = Field(
        default="symbiont-ingest",
        description="MQTT client id; one per ingest process (it names the persistent session)",
    )
    ingest_share_group: str = Field(
        default="symbiont", description="The shared-subscription group ingest processes join"
    )
    ingest_mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT version: `5` bounds the messages in flight by Receive Maximum;"
        " `3.1.1` costs less per message, and the broker's `max_inflight_messages` must then"
        " bound them",
    )
    ingest_batch_readings: int = Field(
        default=20000, ge=1, description="Most readings committed in one transaction"
    )
    ingest_batch_wait_ms: float = Field(
        default=20.0,
        ge=0,
        description="How long a message waits at most for others to share its batch (a batch"
        " goes out at once when 200 messages wait)",
    )
    ingest_pipeline: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Batches written at once, each on its own database connection"
        " (acknowledged in order)",
    )
    ingest_queue_messages: int = Field(
        default=10000,
        ge=100,
        le=65535,
        description="Most messages ingest holds unacknowledged (MQTT 5 Receive Maximum): a"
        " stalled database fills the broker's queue, not ingest's memory",
    )
    ingest_sparkplug: bool = Field(
        default=True,
        description="Whether this ingest process takes Sparkplug B (`spBv1.0/...`): an edge"
        " node's messages must all reach one process, in order, so with several ingest"
        " processes let one take Sparkplug",
    )

    # Metrics of ingest and the rules engine (the API serves /metrics itself).
    metrics_port: int | None = Field(
        default=None,
        description="Ingest and the rules engine serve Prometheus metrics on this port",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of that metrics server (`0.0.0.0` in a container)",
    )

    # The API: where `symbiont api` listens and how live streams behave.
    api_host: str = Field(default="127.0.0.1", description="Where `symbiont api` listens")
    api_port: int = Field(default=8000, ge=1, le=65535, description="Its port")
    api_pool_size: int = Field(default=10, ge=1, description="Database connections per API process")
    live_stream_max_s: float = Field(
        default=900.0,
        gt=0,
        description="A live event stream is closed after this many seconds (clients reconnect)",
    )
    live_heartbeat_s: float = Field(
        default=15.0, gt=0, description="A `: ping` comment on an idle stream this often"
    )
    live_max_streams: int = Field(
        default=2000, ge=1, description="More concurrent streams per API process get 503"
    )
    api_windows_cache_mb: float = Field(
        default=64.0,
        ge=0,
        description="Memory per API process for window histories asked for before, dropped"
        " per exchange when its windows change (0: no cache)",
    )

    # Logs.
    log_json: bool = Field(default=False, description="One JSON object per log line")
    log_level: str = Field(default="INFO", description="`DEBUG`, `INFO`, `WARNING` or `ERROR`")

    # Statement mail (notify/): sent only when smtp_url is set.  User and password are
    # percent-decoded; credentials are never sent unencrypted to a host other than the loopback.
    smtp_url: str | None = Field(
        default=None,
        description="Mail server for statements: `smtp://user:pass@host` (port 25, STARTTLS"
        " when offered), `smtp+starttls://…:587` (STARTTLS required) or `smtps://…:465`;"
        " unset: no mail",
    )
    smtp_from: str | None = Field(
        default=None,
        description="Sender of statement mail, e.g. `Park billing <billing@park.example>`;"
        " default: the SMTP user if it is an address, else `symbiont@` this host's name",
    )

    # Integrations: where alert events go and how the outbox delivers them (notify/).
    alert_webhooks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="http(s) URLs that receive every alert event (Standard Webhooks)",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Key that signs webhooks: `whsec_<base64>`, or any text whose UTF-8 bytes"
        " are the key; unset: webhooks go out unsigned",
    )
    alertmanager_url: str | None = Field(
        default=None,
        description="Prometheus Alertmanager base URL, e.g. `http://127.0.0.1:9093`",
    )
    alert_mqtt: bool = Field(
        default=True,
        description="Publish each alert's state, retained, on `symbiont/alerts/{subject}`",
    )
    notify_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds a delivery may take before it counts as failed"
    )
    notify_max_age_h: float = Field(
        default=24.0,
        gt=0,
        description="Hours a failing delivery is retried before it is given up",
    )
    notify_backoff_base_s: float = Field(
        default=10.0,
        gt=0,
        description="First retry after about this many seconds, doubling after each failure",
    )
    notify_backoff_cap_s: float = Field(
        default=3600.0, gt=0, description="Longest wait between two retries, in seconds"
    )
    notify_batch: int = Field(default=32, ge=1, description="Deliveries attempted at once")
    notify_poll_s: float = Field(
        default=1.0, gt=0, description="How often due retries are looked for, in seconds"
    )
    alertmanager_resend_s: float = Field(
        default=60.0,
        gt=0,
        description="Firing alerts are sent to Alertmanager again this often, in seconds",
    )

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

    @field_validator("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None  # SYMBIONT_MQTT_CA_FILE= (empty) means none, as in a Compose file
        return value

    @model_validator(mode="after")
    def _check_mqtt_tls(self) -> Settings:
        if self.mqtt_key_file is not None and self.mqtt_cert_file is None:
            raise ValueError("SYMBIONT_MQTT_KEY_FILE needs SYMBIONT_MQTT_CERT_FILE")
        files = [
            name
            for name in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")
            if getattr(self, name) is not None
        ]
        scheme = urlsplit(self.mqtt_url).scheme if self.mqtt_url else ""
        if files and self.mqtt_url and scheme not in ("mqtts", "ssl"):
            raise ValueError(
                f"SYMBIONT_{files[0].upper()} is set but SYMBIONT_MQTT_URL is not mqtts://:"
                " the connection would not be encrypted"
            )
        return self

    def mqtt_tls(self) -> MqttTls:
        """The TLS files of the MQTT connection."""
        return MqttTls(self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)

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
