"""Logging: plain lines for people, JSON lines on request (``SYMBIONT_LOG_JSON=true``).

A JSON line carries the record's ``extra`` fields (``log.warning(..., extra={"path": p})``)
beside its message, so the context a call site attaches is not lost; a ``ctx_`` prefix on
such a field is dropped.  Whatever a field holds, the line is written: values that JSON
cannot carry are shown as text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# The attributes every LogRecord has: whatever else a record holds came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_BASE = ("ts", "level", "logger", "msg", "exc")
_MAX_FIELD = 2000


def _text(value: object) -> str:
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not lose the log line
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= _MAX_FIELD else text[: _MAX_FIELD - 1] + "…"


def _field(value: Any) -> Any:
    """``value`` as JSON can carry it: itself when it serializes, else its text."""
    try:
        json.dumps(value, default=_text)
    except (TypeError, ValueError, RecursionError):  # a cycle, or a broken object
        return _text(value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD:
                continue
            name = key[4:] if key.startswith("ctx_") else key
            if name in _BASE:  # a field never hides the line's own
                name = f"extra_{name}"
            doc[name] = _field(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) writes NUL, control characters and lone surrogates as
        # escapes: one record is one line, and the line always encodes.
        return json.dumps(doc, default=_text)


def setup(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").setLevel(logging.WARNING)
