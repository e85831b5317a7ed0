"""Processes of a benchmark run: ``symbiont`` subcommands as services, helper roles that print
their results as one JSON line, and the code of another git revision to time against."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import ROOT, BenchError, log, slug
from benchmarks.harness.proc import cpu_seconds, status_kib

PY_SPY = Path(sys.executable).parent / "py-spy"
# A helper role: what adds its options to its parser, and what runs it (giving its result).
Role = tuple[
    Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict[str, Any]]
]
INGEST_READY = b"connected to mqtt://"  # what ingest logs once connected to the broker
RULES_READY = b"rules worker"  # what the rules service logs once started


def clean_env() -> dict[str, str]:
    """This environment without any SYMBIONT_* setting (the benchmark sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}


def service_env(database_url: str, mqtt_url: str) -> dict[str, str]:
    """The environment of the services: the benchmark's database and broker, INFO logs,
    nothing else of SYMBIONT_* from this environment."""
    env = clean_env()
    env.update(
        SYMBIONT_DATABASE_URL=database_url,
        SYMBIONT_MQTT_URL=mqtt_url,
        SYMBIONT_LOG_LEVEL="INFO",
    )
    return env


def make_workdir(tag: str) -> Path:
    """A directory for the run's logs (``$TMPDIR/symbiont-<tag>-<pid>``)."""
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"symbiont-{tag}-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"logs in {workdir}")
    return workdir


class Service:
    """A ``symbiont`` subcommand (``python -m cli.main ARGS``, run in ``cwd``: the code of
    another revision there) as a subprocess, logging to a file; it may be started again once
    stopped. ``ready`` is what it logs once it is up."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        ready: bytes | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._log_offset = 0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self._log_offset = out.tell()
            self.started_at = time.time()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", *self.args],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() and self.proc is not None else None

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def memory_kib(self, key: str = "VmHWM") -> int | None:
        """``VmHWM`` (peak RSS) or ``VmRSS`` of the running process, None if it is not."""
        return status_kib(self.pid, key)

    def log_since_start(self) -> bytes:
        """What it logged since it was last started."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read()

    def logged(self, text: bytes) -> bool:
        return text in self.log_since_start()

    def wait_log(self, text: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.logged(text):
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not log {text!r}:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until it has logged ``ready`` since it was started."""
        if self.ready is not None:
            self.wait_log(self.ready, timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def ingest_service(env: Mapping[str, str], client_id: str, log_path: Path) -> Service:
    return Service(
        "ingest", ["ingest", "--client-id", client_id], env, log_path, ready=INGEST_READY
    )


def rules_service(env: Mapping[str, str], worker: str, log_path: Path) -> Service:
    return Service("rules", ["rules", "--worker-id", worker], env, log_path, ready=RULES_READY)


def rules_once(env: Mapping[str, str], timeout: float) -> float:
    """``symbiont rules --once`` to the end; the seconds it took."""
    began = time.perf_counter()
    once = subprocess.run(
        [sys.executable, "-m", "cli.main", "rules", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    seconds = time.perf_counter() - began
    if once.returncode != 0:
        raise BenchError(f"symbiont rules --once failed:\n{once.stderr.decode()[-3000:]}")
    return seconds


def run_json(
    cmd: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float | None = None,
    tick: Callable[[], None] | None = None,
    interval: float = 0.1,
    stderr_to: Path | None = None,
) -> dict[str, Any]:
    """Run a helper process to its end and return the result it prints (its last stdout line
    starting with ``{``, JSON). ``tick()`` is called every ``interval`` s while it runs; its
    stderr is saved in ``stderr_to`` if given."""
    out: list[bytes] = []
    err: list[bytes] = []
    with subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None
        readers = [
            threading.Thread(target=lambda: out.append(stdout.read()), daemon=True),
            threading.Thread(target=lambda: err.append(stderr.read()), daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise BenchError(f"{what} did not finish within {timeout:.0f} s")
            if tick is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(None if left == math.inf else left)
            else:
                time.sleep(interval)
                tick()
        for reader in readers:
            reader.join(10)
    if stderr_to is not None:
        stderr_to.write_bytes(b"".join(err))
    if proc.returncode != 0:
        raise BenchError(f"{what} failed:\n{b''.join(err).decode()[-3000:]}")
    lines = [line for line in b"".join(out).splitlines() if line.startswith(b"{")]
    if not lines:
        raise BenchError(f"{what} printed no result:\n{b''.join(err).decode()[-3000:]}")
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result


def role_main(prog: str, roles: Mapping[str, Role], argv: Sequence[str] | None = None) -> int:
    """The command line of a benchmark's helper processes (``prog ROLE [OPTIONS]``): runs the
    role and prints its result as one JSON line, for ``run_json``."""
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="role", required=True)
    for name, (add_arguments, _) in roles.items():
        add_arguments(sub.add_parser(name))
    args = parser.parse_args(argv)
    sys.stdout.write(orjson.dumps(roles[args.role][1](args)).decode() + "\n")
    return 0


def py_spy_record(cmd: Sequence[str], output: Path, *options: str) -> list[str]:
    """``cmd`` run under ``py-spy record`` (with ``options``), its profile written to
    ``output``."""
    return [str(PY_SPY), "record", *options, "-o", str(output), "--", *cmd]


# ------------------------------------------------------------------------------- baseline


def export_code(rev: str, workdir: Path) -> Path:
    """``core``, ``ingest`` and ``rules`` as of git revision ``rev``, in a directory."""
    target = workdir / f"baseline-{slug(rev)}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "core", "ingest", "rules"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {rev} failed: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def describe(rev: str) -> str:
    """The short commit hash of ``rev`` (``rev`` itself if git does not know it)."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or rev
