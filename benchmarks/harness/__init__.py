"""What the benchmarks share: processes and services, CPU and memory from /proc, throwaway
databases, the common options, percentiles and the report sections of BENCHMARKS.md.

- ``proc``: CPU seconds and memory of processes and of the machine (/proc, ``getrusage``),
  over a span or between snapshots, and waiting for an idle machine. The standard library
  only, so that the client processes the benchmarks measure import nothing else.
- ``postgres``: queries, throwaway databases with a network applied, a LISTEN thread, and
  the PostgreSQL backends of a service found by their application_name.
- ``services``: ``symbiont`` subcommands as services, helper roles run as processes that
  print a JSON result, and the code of another git revision to time.
- ``arguments``: the options every benchmark takes and its options from parsed arguments.
- ``reports``: the machine and code measured, percentiles, formats, a report's heading and
  footer, and writing a section of BENCHMARKS.md.

This module holds what all of them use, and imports nothing heavy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")
