"""``python -m benchmarks.run`` (``make bench``): run the benchmarks, print their figures and
record them in BENCHMARKS.md (each benchmark replaces its own section).

    python -m benchmarks.run [--quick] [--quiet-wait S] [--write FILE | --no-write]
        every benchmark, with its default sizes (``--quick``: small sizes, nothing written
        unless ``--write`` is given)
    python -m benchmarks.run --only NAME [OPTIONS]
        one benchmark, with its own options (``--only NAME --help`` lists them)

Benchmarks: ``ingest`` (benchmarks/ingest_throughput.py), ``sparkplug``
(benchmarks/sparkplug_throughput.py), ``rules``
(benchmarks/rules_engine.py), ``rules-sparse`` (benchmarks/rules_sparse.py), ``statements``
(benchmarks/statements.py), ``api`` (benchmarks/api_latency.py) and ``network``
(benchmarks/network_scale.py). They need PostgreSQL (``$SYMBIONT_TEST_DATABASE_URL`` or
postgres@127.0.0.1:5432, allowed to create databases) and the ``mosquitto`` binary.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.harness import BenchError
from benchmarks.harness.arguments import (
    QUIET_WAIT,
    add_common_arguments,
    default_command,
    options_from,
    parse_options,
)

# name → module; each has Options (a dataclass, its fields filled from the options of the
# same name), QUICK (what --quick caps), DESCRIPTION (of its own command line),
# add_arguments(p) and main(opts); from_args(args, command=) if its options need more than
# that, and QUIET_WAIT if its own command line waits longer for an idle machine by default.
BENCHMARKS = {
    "ingest": "benchmarks.ingest_throughput",
    "sparkplug": "benchmarks.sparkplug_throughput",
    "rules": "benchmarks.rules_engine",
    "rules-sparse": "benchmarks.rules_sparse",
    "statements": "benchmarks.statements",
    "api": "benchmarks.api_latency",
    "network": "benchmarks.network_scale",
}


def _module(name: str) -> Any:
    return importlib.import_module(BENCHMARKS[name])


def options(name: str, argv: Sequence[str], command: str) -> Any:
    """One benchmark's options from its own command line (``--only NAME [OPTIONS]``)."""
    module = _module(name)
    quiet_wait = getattr(module, "QUIET_WAIT", QUIET_WAIT)
    args = parse_options(
        argv, name, module.DESCRIPTION, module.add_arguments, quiet_wait=quiet_wait
    )
    return from_args(name, args, command)


def from_args(name: str, args: argparse.Namespace, command: str) -> Any:
    """A benchmark's options from parsed arguments; what ``args`` lacks keeps its default."""
    module = _module(name)
    if hasattr(module, "from_args"):
        return module.from_args(args, command=command)
    return options_from(module.Options, args, module.QUICK, command=command)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = default_command(argv)
    if argv[:1] == ["--only"] or (argv and argv[0].startswith("--only=")):
        name = argv[0].split("=", 1)[1] if "=" in argv[0] else (argv[1:2] or [""])[0]
        rest = argv[1:] if "=" in argv[0] else argv[2:]
        if name not in BENCHMARKS:
            print(f"--only takes one of: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        runs = [(name, options(name, rest, command))]
    else:
        p = argparse.ArgumentParser(
            prog="python -m benchmarks.run",
            description="Run every benchmark (or one: --only NAME [its options]).",
            epilog=f"benchmarks: {', '.join(BENCHMARKS)}",
        )
        add_common_arguments(p)
        args = p.parse_args(argv)
        runs = [(name, from_args(name, args, command)) for name in BENCHMARKS]
    failed = 0
    for name, opts in runs:
        try:
            _module(name).main(opts)
        except BenchError as exc:
            print(f"benchmark {name} failed: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
