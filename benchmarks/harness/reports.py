"""What the benchmarks' reports share: the machine and code measured, percentiles, the figures'
formats, and writing a section of BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from benchmarks.harness import ROOT, log
from benchmarks.harness.postgres import fetch
from benchmarks.harness.proc import loadavg
from tests.services import Mosquitto, system_postgres_url

# ----------------------------------------------------------------------------- the figures


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def percentile_of(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile of any values, NaN if there are none."""
    ordered = sorted(values)
    return percentile(ordered, q) if ordered else math.nan


def by_interval(
    samples: Iterable[tuple[float, float]], step: float = 10.0
) -> list[tuple[str, list[float]]]:
    """(time, value) pairs grouped by the ``step``-second interval their time (from the
    run's start) falls in, in order: ("0–10 s", the interval's values ascending), …"""
    groups: dict[int, list[float]] = defaultdict(list)
    for at, value in samples:
        groups[int(at // step)].append(value)
    return [
        (f"{int(k * step)}–{int((k + 1) * step)} s", sorted(values))
        for k, values in sorted(groups.items())
    ]


def mib(kib: int | None) -> str:
    """A memory figure given in KiB, in MiB, "n/a" if unknown."""
    return f"{kib / 1024:,.0f} MiB" if kib else "n/a"


def secs(value: float | None, places: int = 1) -> str:
    """Seconds (CPU or wall) as a table shows them, "–" if unknown."""
    return "–" if value is None else f"{value:.{places}f}"


# ---------------------------------------------------------------------- machine and code


def machine() -> dict[str, str]:
    """The machine and the software measured (the CPU, the PostgreSQL server, Mosquitto…)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    pg = fetch(system_postgres_url(), "SELECT version() AS v")[0]["v"].split(" on ")[0]
    mosq = Mosquitto(autosave_interval=1)
    try:
        out = subprocess.run([mosq.binary, "-h"], capture_output=True, text=True, check=False)
        mosquitto = (out.stdout or out.stderr).splitlines()[0].strip()
    finally:
        mosq.close()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "postgresql": pg,
        "mosquitto": mosquitto,
        "python": platform.python_version(),
        "paho-mqtt": metadata.version("paho-mqtt"),
        "asyncpg": metadata.version("asyncpg"),
    }


def git_state(paths: Sequence[str]) -> tuple[str, list[str]] | None:
    """The short hash of HEAD and the files below ``paths`` changed since, None if git
    cannot tell."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return None
    if not head:
        return None
    return head, sorted(line[3:] for line in status if line.strip())


def code_version(*paths: str) -> str:
    """The commit measured, and the files below ``paths`` that differed from it."""
    state = git_state(paths)
    if state is None:
        return "unknown"
    head, changed = state
    return f"commit {head}" + (
        f" with uncommitted changes in {', '.join(changed)}" if changed else ""
    )


# ---------------------------------------------------------------------------------- report


@dataclass
class RunReport:
    """What a benchmark's report says of its run as a whole (its own report adds the rest)."""

    code: str = ""  # the code measured
    load_before: str = ""
    load_after: str = ""
    seconds: float = 0.0

    def footer(self) -> str:
        return (
            f"Load average before the run {self.load_before}, after it {self.load_after} "
            f"(anything else running on the machine competes for the same 2 cores); the whole "
            f"run took {self.seconds:.0f} s."
        )


@contextlib.contextmanager
def timed_run(report: RunReport) -> Iterator[None]:
    """The load average before and after what it encloses, and how long that took."""
    report.load_before = loadavg()
    began = time.monotonic()
    try:
        yield
    finally:
        report.load_after = loadavg()
        report.seconds = time.monotonic() - began


def heading(
    section: str,
    command: str,
    code: str,
    info: dict[str, str],
    where: str,
    *,
    broker: bool,
    paho: bool = False,
    code_label: str = "; code: ",
) -> list[str]:
    """A report's first lines: its heading; when it was measured, with which command and on
    which ``code``; the machine (``info``, see ``machine``) with the versions that matter to
    the benchmark (Mosquitto's if ``broker``, paho-mqtt's if ``paho``), and ``where``: what
    ran on it."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    python = f"Python {info['python']}"
    if paho:
        python += f", paho-mqtt {info['paho-mqtt']}"
    versions = [
        f"Linux {info['kernel']}",
        info["postgresql"],
        *([info["mosquitto"]] if broker else []),
        f"{python}, asyncpg {info['asyncpg']}",
    ]
    return [
        section,
        "",
        f"Measured {now} with `{command}` (from the repository root){code_label}{code}.",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        + "; ".join(versions)
        + f". {where}",
    ]


def write_section(path: Path, section: str, text: str, *, stop: str = "## ") -> None:
    """Replace the section headed ``section`` in ``path`` (or append it), keeping the rest.

    The section runs from its heading to the next line starting with ``stop``: ``"## "`` for
    the next section, ``"#"`` for the next heading of any level (so that notes written by hand
    under a heading of their own stay)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines()
    try:
        start = lines.index(section)
    except ValueError:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith(stop)), len(lines)
        )
        tail = "\n".join(lines[end:])
        new = "\n".join(lines[:start]) + "\n" + text + ("\n" + tail + "\n" if tail else "")
    path.write_text(new)


def publish(text: str, write: Path | None, section: str, *, stop: str = "## ") -> None:
    """Print a benchmark's report and, unless ``write`` is None, record it as its section of
    that file (see ``write_section``)."""
    print()
    print(text)
    if write is not None:
        write_section(write, section, text, stop=stop)
        log(f"wrote {write}")
