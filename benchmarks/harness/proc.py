"""CPU seconds and memory of processes and of the whole machine, from /proc and ``getrusage``.

Every benchmark reports the CPU of each process involved and of the machine over what it
times, so that a run disturbed by other work on the box says so. The standard library only:
the client processes the benchmarks measure import this module, and their own peak memory
is one of the figures.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.harness import log

BackendCpu = dict[int, tuple[str, float]]  # PostgreSQL backend pid → (application_name, CPU s)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a live process has used, None if it cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float | None:
    """CPU seconds all cores of this machine have spent busy since boot (/proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def rusage_cpu(who: int = resource.RUSAGE_SELF) -> float:
    """User + system CPU seconds of this process (or of its children it waited for)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def children_cpu(parent: int) -> float:
    """CPU seconds of the live child processes of ``parent`` and of their children."""
    spent = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            spent += (cpu_seconds(int(entry.name)) or 0.0) + children_cpu(int(entry.name))
    return spent


def status_kib(pid: int | str | None = "self", key: str = "VmHWM") -> int | None:
    """A memory figure of ``/proc/<pid>/status`` in KiB (``VmHWM``: the peak resident set
    size; ``VmRSS``: the current one), None if it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def total(values: Sequence[float | None]) -> float | None:
    """The sum, None if any is unknown."""
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def others(machine: float | None, *ours: float | None) -> float | None:
    """CPU seconds the rest of the machine spent: all of it (``machine``) but ``ours``,
    of which an unknown one counts as nothing; None if the machine's is unknown."""
    if machine is None:
        return None
    return max(0.0, machine - sum(v or 0.0 for v in ours))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def wait_quiet(max_wait: float, threshold: float = 0.25) -> None:
    """Wait (at most ``max_wait`` s) until the machine was busy for less than ``threshold``
    cores over the last second: other work on the box skews every figure."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy()
        time.sleep(1.0)
        busy = delta(machine_busy(), before)
        if busy is None or busy < threshold:
            return
        if time.monotonic() >= deadline:
            log(f"the machine is still busy ({busy:.2f} cores of other work); measuring anyway")
            return


# ------------------------------------------------------------------- over a span of time


@dataclass
class Snapshot:
    """CPU seconds of named processes and of the machine (``"machine"``) at one moment, and
    optionally of PostgreSQL backends and the resident memory of some of the processes."""

    t: float
    cpu: dict[str, float | None]
    backends: BackendCpu = field(default_factory=dict)
    rss_kib: dict[str, int | None] = field(default_factory=dict)


def snapshot(
    pids: Mapping[str, int | None],
    *,
    backends: Callable[[], BackendCpu] | None = None,
    rss_of: Sequence[str] = (),
) -> Snapshot:
    """Read the CPU seconds of the processes ``pids`` names (None: not running) and of the
    machine; ``backends()`` gives the PostgreSQL backends' and ``rss_of`` names the
    processes whose VmRSS is read too."""
    at = time.time()
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu["machine"] = machine_busy()
    return Snapshot(
        at,
        cpu,
        backends() if backends is not None else {},
        {name: status_kib(pids[name], "VmRSS") for name in rss_of},
    )


def spent(a: Snapshot, b: Snapshot, groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """CPU seconds per process (and of the machine) between two snapshots, the backends
    summed per group (group → application_name prefix; a backend that appeared in between
    counts from zero), and the wall time between them (``"wall"``)."""
    out: dict[str, Any] = {key: delta(b.cpu.get(key), value) for key, value in a.cpu.items()}
    for group, prefix in (groups or {}).items():
        out[group] = float(
            sum(
                cpu - a.backends.get(pid, (name, 0.0))[1]
                for pid, (name, cpu) in b.backends.items()
                if name.startswith(prefix)
            )
        )
    out["wall"] = b.t - a.t
    return out


class Span:
    """The wall time of a span of this process's work, and the CPU seconds meanwhile of this
    process, of the children it waited for, of one other process (its PostgreSQL backend)
    and of the whole machine; its peak RSS (``ru_maxrss``) before and after.

    ``with Span(backend_pid) as span: ...`` then ``span.figures()``."""

    def __init__(self, backend: int | None = None) -> None:
        self.backend = backend
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.children_cpu_s = 0.0
        self.backend_cpu_s: float | None = None
        self.machine_cpu_s: float | None = None
        self.rss_before_kib = 0
        self.peak_rss_kib = 0

    def __enter__(self) -> Span:
        self.rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._cpu = rusage_cpu(resource.RUSAGE_SELF)
        self._children = rusage_cpu(resource.RUSAGE_CHILDREN)
        self._backend = cpu_seconds(self.backend)
        self._busy = machine_busy()
        self._began = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wall_s = time.perf_counter() - self._began
        self.machine_cpu_s = delta(machine_busy(), self._busy)
        self.backend_cpu_s = delta(cpu_seconds(self.backend), self._backend)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_s = usage.ru_utime + usage.ru_stime - self._cpu
        self.peak_rss_kib = usage.ru_maxrss
        self.children_cpu_s = rusage_cpu(resource.RUSAGE_CHILDREN) - self._children

    def figures(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "children_cpu_s": self.children_cpu_s,
            "backend_cpu_s": self.backend_cpu_s,
            "machine_cpu_s": self.machine_cpu_s,
            "rss_before_kib": self.rss_before_kib,
            "peak_rss_kib": self.peak_rss_kib,
        }
