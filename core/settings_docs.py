"""The configuration reference, written from the settings model itself.

``python -m core.settings_docs`` writes ``docs/configuration.md`` (``--check`` only says whether
it is current). Every ``SYMBIONT_*`` variable, its type, default, limits and meaning come from
:class:`core.settings.Settings`; this module only groups them and says how they are read.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic.fields import FieldInfo

from core.network_docs import REPO, constraints, page_main
from core.settings import Settings

TARGET = REPO / "docs" / "configuration.md"

# (heading, setting names): the page's sections.  A setting in none of them is listed last,
# under "Other settings", so a new one is never left out.
GROUPS: list[tuple[str, list[str]]] = [
    (
        "Database and broker",
        ["database_url", "mqtt_url", "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file"],
    ),
    (
        "Readings accepted and kept",
        [
            "backfill_days",
            "future_tolerance_s",
            "max_payload_bytes",
            "readings_retention_days",
        ],
    ),
    (
        "Ingest",
        [
            "ingest_client_id",
            "ingest_share_group",
            "ingest_mqtt_protocol",
            "ingest_batch_readings",
            "ingest_batch_wait_ms",
            "ingest_pipeline",
            "ingest_queue_messages",
            "ingest_sparkplug",
        ],
    ),
    ("Rules engine", ["rules_pass_interval_s"]),
    ("Statements", ["statement_grace", "smtp_url", "smtp_from"]),
    (
        "Alert delivery",
        [
            "alert_webhooks",
            "webhook_secret",
            "alertmanager_url",
            "alert_mqtt",
            "notify_max_age_h",
            "notify_timeout_s",
            "notify_backoff_base_s",
            "notify_backoff_cap_s",
            "notify_batch",
            "notify_poll_s",
            "alertmanager_resend_s",
        ],
    ),
    (
        "API and dashboard",
        [
            "api_host",
            "api_port",
            "api_pool_size",
            "live_stream_max_s",
            "live_heartbeat_s",
            "live_max_streams",
            "api_windows_cache_mb",
        ],
    ),
    ("Logs and metrics", ["log_level", "log_json", "metrics_port", "metrics_host"]),
]


def env_name(name: str) -> str:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type(args[0])
    if len(args) == 1 and origin is not list:
        return _type(args[0])
    if origin is list:
        return "comma-separated list"
    names = {str: "text", int: "whole number", float: "number", bool: "`true` \\| `false`"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None or info.default is None:
        return "—"
    value = info.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _row(name: str, info: FieldInfo) -> str:
    if not info.description:
        raise ValueError(f"Settings.{name} has no Field(description=...)")
    kind = _type(info.annotation)
    limits = constraints(info)
    if limits:
        kind += ", " + ", ".join(limits)
    return f"| `{env_name(name)}` | {kind} | {_default(info)} | {info.description} |"


def render() -> str:
    """The whole page, as Markdown."""
    fields = Settings.model_fields
    grouped = [name for _, names in GROUPS for name in names]
    unknown = [name for name in grouped if name not in fields]
    if unknown:
        raise ValueError(f"no such settings: {', '.join(unknown)}")
    groups = [*GROUPS, ("Other settings", [name for name in fields if name not in grouped])]
    out = [
        "# Configuration",
        "",
        "<!-- Generated from the settings model (core/settings.py) by"
        " `python -m core.settings_docs`; edit that, not this page. -->",
        "",
        "Every symbiont process (`symbiont ingest`, `rules`, `api`, the command line) reads its",
        "settings from `SYMBIONT_*` environment variables once, when it starts. A value that",
        "does not fit is refused before anything runs: `symbiont: bad configuration: …` names",
        "the variable, and the process exits with status 2. What describes the network itself",
        "(partners, meters, exchanges, prices, alert rule settings) is in the",
        "[network file](network-file.md), not here.",
        "",
        "Durations in seconds end in `_s`, in milliseconds `_ms`, in hours `_h`.",
    ]
    for heading, names in groups:
        if not names:
            continue
        out += ["", f"## {heading}", "", "| variable | type | default | what |"]
        out += ["|---|---|---|---|"]
        out += [_row(name, fields[name]) for name in names]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    return page_main(
        argv,
        module="core.settings_docs",
        what="the configuration reference",
        target=TARGET,
        render=render,
    )


if __name__ == "__main__":
    raise SystemExit(main())
