"""The command line every benchmark shares: its common options and where its figures go."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from benchmarks.harness import ROOT

QUIET_WAIT = 5.0  # default of --quiet-wait (a benchmark's own command line may set another)


class BenchmarkOptions(Protocol):
    write: Path | None  # where the figures go, None: nowhere


T = TypeVar("T", bound=BenchmarkOptions)


def add_common_arguments(p: argparse.ArgumentParser, *, quiet_wait: float = QUIET_WAIT) -> None:
    """The options every benchmark takes (``benchmarks.run`` without ``--only``)."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke run (figures not written unless --write is given)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=quiet_wait,
        help="before each measurement wait up to this many seconds for the machine to be "
        "idle (default %(default)s)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--write",
        type=Path,
        default=None,
        help="file to record the figures in (default BENCHMARKS.md)",
    )
    out.add_argument("--no-write", action="store_true", help="only print the figures")


def parse_options(
    argv: Sequence[str],
    name: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    *,
    quiet_wait: float = QUIET_WAIT,
) -> argparse.Namespace:
    """A benchmark's own command line (``benchmarks.run --only NAME``): its options and the
    common ones."""
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run --only {name}", description=description
    )
    add_arguments(p)
    add_common_arguments(p, quiet_wait=quiet_wait)
    return p.parse_args(argv)


def add_baseline_arguments(p: argparse.ArgumentParser, baseline: str, profile: str) -> None:
    """``--baseline REV``, to time the code of that git revision too (``baseline`` says on
    what and what is compared), and ``--profile FILE``, a py-spy flame graph (``profile``
    says of what)."""
    p.add_argument("--baseline", default=None, metavar="REV", help=baseline)
    p.add_argument("--profile", type=Path, default=None, help=profile)


def output_file(args: argparse.Namespace, default: Path | None) -> Path | None:
    """Where the figures go: ``--write FILE``, nowhere with ``--no-write`` or ``--quick``
    (unless ``--write`` is given), else ``default``."""
    write: Path | None = getattr(args, "write", None)
    if getattr(args, "no_write", False) or (getattr(args, "quick", False) and write is None):
        return None
    return write if write is not None else default


def default_command(argv: list[str]) -> str:
    """How the benchmarks were run, as the report states it."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(ROOT)
    return shlex.join([str(python), "-m", "benchmarks.run", *argv])


def options_from(
    cls: type[T],
    args: argparse.Namespace,
    quick: Mapping[str, float] | None = None,
    **fields: Any,
) -> T:
    """A benchmark's options (dataclass ``cls``) from parsed arguments: each field from the
    option of its name (a ``--no-NAME`` flag turns field NAME off), ``fields`` as given, and
    what ``args`` lacks keeps its default. ``--quick`` caps the fields ``quick`` names at the
    values it gives; ``write`` is where the figures go (see ``output_file``)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in fields or f.name == "write" or not f.init:
            continue
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
        elif hasattr(args, f"no_{f.name}"):
            values[f.name] = not getattr(args, f"no_{f.name}")
    opts = cls(**values, **fields)
    if getattr(args, "quick", False):
        for name, cap in (quick or {}).items():
            setattr(opts, name, min(getattr(opts, name), cap))
    opts.write = output_file(args, opts.write)
    return opts
