"""``python -m benchmarks.run`` (``make bench``): run the benchmarks, print their figures and
record them in BENCHMARKS.md (each benchmark replaces its own section).

    python -m benchmarks.run [--quick] [--quiet-wait S] [--write FILE | --no-write]
        every benchmark, with its default sizes (``--quick``: small sizes, nothing written
        unless ``--write`` is given)
    python -m benchmarks.run --only NAME [OPTIONS]
        one benchmark, with its own options (``--only NAME --help`` lists them)

Benchmarks: ``ingest`` (benchmarks/ingest_throughput.py), ``rules``
(benchmarks/rules_engine.py), ``statements`` (benchmarks/statements.py) and ``api``
(benchmarks/api_latency.py). They need PostgreSQL (``$SYMBIONT_TEST_DATABASE_URL`` or
postgres@127.0.0.1:5432, allowed to create databases) and the ``mosquitto`` binary.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks import ingest_throughput as it

# name → module; each has options(argv, command=), from_args(args, command=) and main(opts).
BENCHMARKS = {
    "ingest": "benchmarks.ingest_throughput",
    "rules": "benchmarks.rules_engine",
    "statements": "benchmarks.statements",
    "api": "benchmarks.api_latency",
}


def _module(name: str) -> Any:
    return importlib.import_module(BENCHMARKS[name])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = it.default_command(argv)
    if argv[:1] == ["--only"] or (argv and argv[0].startswith("--only=")):
        name = argv[0].split("=", 1)[1] if "=" in argv[0] else (argv[1:2] or [""])[0]
        rest = argv[1:] if "=" in argv[0] else argv[2:]
        if name not in BENCHMARKS:
            print(f"--only takes one of: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        runs = [(name, _module(name).options(rest, command=command))]
    else:
        p = argparse.ArgumentParser(
            prog="python -m benchmarks.run",
            description="Run every benchmark (or one: --only NAME [its options]).",
            epilog=f"benchmarks: {', '.join(BENCHMARKS)}",
        )
        it.add_common_arguments(p)
        args = p.parse_args(argv)
        runs = [(name, _module(name).from_args(args, command=command)) for name in BENCHMARKS]
    failed = 0
    for name, opts in runs:
        try:
            _module(name).main(opts)
        except it.BenchError as exc:
            print(f"benchmark {name} failed: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
