"""JSON log lines carry the fields a call site attaches (``extra``), whatever they hold."""

from __future__ import annotations

import json
import logging
import sys

from core.logs import JsonFormatter


def _record(msg: str = "authentication failed: %s", *args: object, **extra: object) -> str:
    logger = logging.getLogger("symbiont.test.logs")
    record = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, msg, args or ("no token",), None, extra=extra
    )
    return JsonFormatter().format(record)


def test_extra_fields_are_in_the_line() -> None:
    line = _record(path="/api/v1/network", client="10.0.0.7", method="GET", ctx_request=12)
    doc = json.loads(line)
    assert doc["msg"] == "authentication failed: no token"
    assert doc["level"] == "warning" and doc["logger"] == "symbiont.test.logs"
    assert doc["path"] == "/api/v1/network" and doc["client"] == "10.0.0.7"
    assert doc["method"] == "GET" and doc["request"] == 12
    for standard in ("args", "lineno", "pathname", "thread", "exc_info", "created"):
        assert standard not in doc


def test_any_value_is_written_and_one_record_is_one_line() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    cycle: list[object] = []
    cycle.append(cycle)
    line = _record(
        nul="a\x00b\nforged line",
        surrogate="\ud800",
        obj=object(),
        broken=Broken(),
        cycle=cycle,
        nested={"k": [1, 2.5, None]},
        tuple_keys={(1, 2): "x"},
        big="x" * 10_000,
    )
    assert "\n" not in line
    line.encode("utf-8")  # always encodes
    doc = json.loads(line)
    assert doc["nul"] == "a\x00b\nforged line" and doc["surrogate"] == "\ud800"
    assert doc["obj"].startswith("<object object")
    assert doc["broken"] == "<unprintable Broken>"
    assert isinstance(doc["cycle"], str)
    assert doc["nested"] == {"k": [1, 2.5, None]}
    assert isinstance(doc["tuple_keys"], str)
    assert doc["big"] == "x" * 10_000


def test_a_field_never_hides_the_lines_own() -> None:
    doc = json.loads(_record(level="fake", ts="then", logger="other"))
    assert doc["level"] == "warning" and doc["logger"] == "symbiont.test.logs"
    assert doc["extra_level"] == "fake" and doc["extra_ts"] == "then"


def test_an_exception_is_kept() -> None:
    logger = logging.getLogger("symbiont.test.logs")
    try:
        raise ValueError("bad")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in doc["exc"]
