"""Network file at scale: validating and applying a network of 150,000 meters, and the services
starting on it.

The file (``network_file``): ``meters / 2`` exchanges of two meters each (one sent, one
received) between ``partners`` partners (default one per 50 meters), every meter reporting
each minute but the trucked materials' weighbridges (``delta``, daily windows). Six in ten
exchanges carry heat (MWh/GJ registers, MW rates), three water (m3, m3/h), one a material
(t, kg tickets); hourly windows (a quarter of the heat ones 15 minutes). Every third exchange
has terms (a tenth of those two dates), one in a hundred an alert rule override, one meter in
two hundred its own rule settings, one in ten a Sparkplug B source, a third of the partners
an e-mail address, a legal address and a VAT id. ``balances`` hubs (default one per 150
meters) each receive one exchange and pass it on in two others, with a balance over the three
meters at the hub: ``in`` the received meter, ``out`` the two sent ones.

The timed part, each step a process of its own (``python -m cli.main ...``) against a fresh
database migrated from a template (and a private Mosquitto): ``network validate FILE``,
``network apply FILE`` into the empty database, ``network apply FILE`` again (nothing
changes), and the services one after the other, each from its start until it is ready:

- ``symbiont ingest`` until it logs that it is connected to the broker (it loads the network
  before it connects);
- ``symbiont rules`` until it logs that it loaded the network (the engine's first pass);
- ``symbiont api`` until ``/readyz`` answers 200, then until the first ``/api/v1/network``
  with an operator token answers (the API loads the network at the first request that needs
  it).

Wall time from start to exit (or to ready), peak RSS (``VmHWM`` of a service, read from
/proc while it runs; ``ru_maxrss`` of the waited-for child for a command). ``--baseline REV``
runs the same steps with the code of git revision REV (the whole tree, ``git archive``) on a
database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import BenchError, log, postgres, proc, reports, services  # noqa: E402
from benchmarks.harness.reports import mib, secs  # noqa: E402
from tests.services import (  # noqa: E402
    Mosquitto,
    create_database,
    create_migrated_template,
    drop_database,
    free_port,
    system_postgres_url,
)

SECTION = "## Network file at scale (issue: network file at scale)"
TARGET_S = 60.0
TARGET_RSS_KIB = 1024 * 1024
TIMEZONE = "Europe/Copenhagen"
REQUEST_TIMEOUT_S = 300.0  # the API's first /api/v1/network gets this long


@dataclass
class Options:
    meters: int = 150_000
    partners: int | None = None  # default: one per 50 meters
    balances: int | None = None  # default: one per 150 meters
    services: bool = True
    baseline: str | None = None
    quiet_wait: float = 5.0
    write: Path | None = ROOT / "BENCHMARKS.md"
    command: str = ""


DESCRIPTION = "Network file at scale: validate, apply, services (benchmarks/network_scale.py)."
QUICK = {"meters": 2_000, "quiet_wait": 1.0}


# --------------------------------------------------------------------------------- the file


def _q(text: str) -> str:
    """A YAML double-quoted scalar (ASCII text)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def network_file(path: Path, meters: int, partners: int | None, balances: int | None) -> None:
    """Write the benchmark's network (see the module's docstring) to ``path``."""
    exchanges = meters // 2
    n_partners = max(3, partners if partners is not None else meters // 50)
    n_hubs = min(balances if balances is not None else meters // 150, exchanges // 3)
    out: list[str] = [
        "# A generated network for benchmarks/network_scale.py",
        "network: bench-scale",
        f"name: Network at scale ({meters} meters)",
        f"timezone: {TIMEZONE}",
        "currency: EUR",
        "",
        "partners:",
    ]
    for p in range(n_partners):
        out += [f"  - id: p{p:05d}", f"    name: {_q(f'Partner {p} A/S')}"]
        if p % 3 == 0:
            out += [
                f"    email: billing@p{p:05d}.example",
                f"    address: {_q(f'Industrivej {p % 200 + 1}, {4000 + p % 900} Kalundborg')}",
                f"    vat_id: DK{10_000_000 + p}",
            ]
        if p % 7 == 0:
            out.append(f"    webhook: https://erp.p{p:05d}.example/symbiont")
    meter_lines: list[str] = []
    exchange_lines: list[str] = []
    balance_lines: list[str] = []
    meter_rules: list[str] = []

    def kind_of(i: int) -> str:
        return "heat" if i % 10 < 6 else "water" if i % 10 < 9 else "material"

    def meter(mid: str, partner: int, kind: str, n: int, sent: bool) -> None:
        lines = [f"  - id: {mid}", f"    partner: p{partner:05d}", f"    kind: {kind}"]
        if kind == "material":
            unit = "t" if sent else "kg"
            lines += ["    medium: gypsum", "    reading: delta", f"    unit: {unit}"]
            lines += ["    uncertainty: 0.002", "    uncertainty_abs: 0.02"]
        else:
            rate = not sent and n % 2 == 1
            if kind == "heat":
                unit = "MW" if rate else ("GJ" if n % 5 == 0 else "MWh")
                lines.append(f"    medium: {'steam' if n % 3 == 0 else 'hot water'}")
            else:
                unit = "m3/h" if rate else "m3"
            lines += [f"    reading: {'rate' if rate else 'total'}", f"    unit: {unit}"]
            lines += [f"    uncertainty: {0.01 if kind == 'heat' else 0.015}", "    interval: 60"]
        if n % 10 == 0:
            lines += [
                "    sparkplug:",
                f"      group: site-{partner % 50:02d}",
                f"      node: p{partner:05d}",
                f"      device: {'flow' if sent else 'meter'}-{n}",
                f"      metric: {'Energy/Total' if kind == 'heat' else 'Volume/Total'}",
            ]
        meter_lines.extend(lines)
        if (2 * n + (0 if sent else 1)) % 200 == 0:
            meter_rules.extend([f"  {mid}:", "    meter_stale:", "      intervals: 5"])

    for i in range(exchanges):
        if i < 3 * n_hubs:
            hub, leg = divmod(i, 3)
            h = hub % n_partners
            kind = "heat" if hub % 2 == 0 else "water"
            if leg == 0:
                provider, receiver = (h + 1) % n_partners, h
            else:
                provider, receiver = h, (h + 1 + leg) % n_partners
        else:
            kind = kind_of(i)
            provider = i % n_partners
            receiver = (provider + 1 + (i // n_partners) % (n_partners - 1)) % n_partners
        sent, received = f"m{i:06d}-s", f"m{i:06d}-r"
        meter(sent, provider, kind, i, True)
        meter(received, receiver, kind, i, False)
        window = "1d" if kind == "material" else ("15m" if kind == "heat" and i % 4 == 3 else "1h")
        lines = [
            f"  - id: x{i:06d}",
            f"    provider: p{provider:05d}",
            f"    receiver: p{receiver:05d}",
            f"    kind: {kind}",
            f"    sent: [{sent}]",
            f"    received: [{received}]",
            f"    loss: {(i % 4) * 0.01:.2f}",
            f"    window: {window}",
            f"    nominal: {1.0 + (i * 37 % 100) / 4}",
        ]
        if i % 5 == 1:
            lines.append("    billing: sent")
        if i % 3 == 0:
            price = 20 + i % 7
            lines += [
                "    terms:",
                "      - from: 2026-01-01",
                f"        price: {price}.00",
                "        receiver_avoided_cost: 35.00",
                "        receiver_avoided_co2: 0.226",
            ]
            if i % 30 == 0:
                lines += ["      - from: 2026-07-01", f"        price: {price + 1}.50"]
        if i % 100 == 7:
            lines += ["    rules:", "      imbalance:", "        z: 4"]
        exchange_lines.extend(lines)
    for hub in range(n_hubs):
        kind = "heat" if hub % 2 == 0 else "water"
        a, b, c = 3 * hub, 3 * hub + 1, 3 * hub + 2
        balance_lines += [
            f"  - id: hub{hub:05d}",
            f"    kind: {kind}",
            f"    in: [m{a:06d}-r]",
            f"    out: [m{b:06d}-s, m{c:06d}-s]",
            f"    loss: {0.01 if kind == 'water' else 0.0}",
            "    window: 1h",
        ]
    out += ["", "meters:", *meter_lines, "", "exchanges:", *exchange_lines]
    if balance_lines:
        out += ["", "balances:", *balance_lines]
    if meter_rules:
        out += ["", "meter_rules:", *meter_rules]
    path.write_text("\n".join(out) + "\n")


# ------------------------------------------------------------------------------ measuring


@dataclass
class Step:
    name: str
    wall_s: float
    cpu_s: float | None
    peak_kib: int | None
    note: str = ""


@dataclass
class Run:
    label: str  # "this code" or the baseline's revision
    steps: list[Step] = field(default_factory=list)


@dataclass
class Report(reports.RunReport):
    file_mib: float = 0.0
    counts: str = ""
    runs: list[Run] = field(default_factory=list)


def timed_command(
    name: str, args: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 1800.0
) -> Step:
    """``python -m cli.main ARGS`` to its end: wall time, CPU and peak RSS (from ``wait4``)."""
    began = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert child.stdout is not None
    output = child.stdout.read()  # the commands print little
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    text = output.decode(errors="replace").strip()
    if child.returncode != 0:
        raise BenchError(f"{name} failed ({child.returncode}):\n{text[-3000:]}")
    if wall > timeout:
        log(f"{name} took {wall:.0f} s, more than {timeout:.0f} s")
    last = text.splitlines()[-1] if text else ""
    log(f"{name}: {wall:.1f} s, {usage.ru_maxrss / 1024:.0f} MiB — {last[:200]}")
    return Step(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, last)


def _get(url: str, token: str | None = None) -> int:
    """The status of a GET (0 when nothing answers)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        return httpx.get(url, headers=headers, timeout=REQUEST_TIMEOUT_S).status_code
    except httpx.HTTPError:
        return 0


def service_steps(
    code: Path, env: dict[str, str], database_url: str, workdir: Path, label: str
) -> list[Step]:
    """Each service from its start until it is ready (see the module's docstring)."""
    from api.tokens import create_token

    steps: list[Step] = []

    def started(name: str, args: list[str], ready: bytes) -> None:
        svc = services.Service(
            name, args, env, workdir / f"{services.slug(label)}-{name}.log", cwd=code
        )
        began = time.perf_counter()
        svc.start()
        try:
            svc.wait_log(ready, timeout=900)
            steps.append(
                Step(
                    f"`symbiont {name}` ready",
                    time.perf_counter() - began,
                    svc.cpu_seconds(),
                    svc.memory_kib(),
                )
            )
        finally:
            svc.stop()
        log(f"{label}: {steps[-1].name} in {steps[-1].wall_s:.1f} s")

    started(
        "ingest", ["ingest", "--client-id", f"bench-scale-{os.getpid()}"], services.INGEST_READY
    )
    started("rules", ["rules", "--worker-id", "bench-scale"], b"network loaded")

    token = asyncio.run(
        postgres.session(database_url, lambda conn: create_token(conn, "operator", name="bench"))
    ).token
    port = free_port()
    svc = services.Service(
        "api",
        ["api", "--host", "127.0.0.1", "--port", str(port)],
        env,
        workdir / f"{services.slug(label)}-api.log",
        cwd=code,
    )
    base = f"http://127.0.0.1:{port}"
    began = time.perf_counter()
    svc.start()
    try:
        while _get(f"{base}/readyz") != 200:
            if not svc.alive() or time.perf_counter() - began > 900:
                raise BenchError(f"api did not get ready:\n{svc.log_tail()}")
            time.sleep(0.05)
        steps.append(
            Step(
                "`symbiont api` /readyz 200",
                time.perf_counter() - began,
                svc.cpu_seconds(),
                svc.memory_kib(),
            )
        )
        asked = time.perf_counter()
        status = _get(f"{base}/api/v1/network", token)
        first = Step(
            "`symbiont api` first /api/v1/network",
            time.perf_counter() - began,
            svc.cpu_seconds(),
            svc.memory_kib(),
        )
        if status == 0 and time.perf_counter() - asked >= REQUEST_TIMEOUT_S:
            first.wall_s = math.inf  # no answer in time: reported as such
            steps += [first, Step("`symbiont api` next /api/v1/network", math.inf, None, None)]
        elif status != 200:
            raise BenchError(f"GET /api/v1/network answered {status}:\n{svc.log_tail()}")
        else:
            steps.append(first)
            again = time.perf_counter()
            _get(f"{base}/api/v1/network", token)
            steps.append(
                Step(
                    "`symbiont api` next /api/v1/network",
                    time.perf_counter() - again,
                    None,
                    svc.memory_kib(),
                    "that request alone",
                )
            )
    finally:
        svc.stop()
    log(f"{label}: api ready in {steps[-3].wall_s:.1f} s, first /network {steps[-2].wall_s:.1f} s")
    return steps


def measure(
    label: str,
    code: Path,
    opts: Options,
    file: Path,
    template: str,
    broker_url: str,
    workdir: Path,
) -> Run:
    admin = system_postgres_url()
    name = f"symbiont_bench_scale_{services.slug(label)}_{os.getpid()}"
    url = create_database(admin, name, template=template)
    run = Run(label)
    try:
        env = services.service_env(url, broker_url)
        for step, args in (
            ("`network validate`", ["network", "validate", str(file)]),
            ("`network apply` (empty database)", ["network", "apply", str(file)]),
            ("`network apply` (same file again)", ["network", "apply", str(file)]),
        ):
            proc.wait_quiet(opts.quiet_wait)
            run.steps.append(timed_command(step, args, code, env))
        if opts.services:
            proc.wait_quiet(opts.quiet_wait)
            run.steps += service_steps(code, env, url, workdir, label)
    finally:
        drop_database(admin, name)
    return run


def export_tree(rev: str, workdir: Path) -> Path:
    """The whole tree of git revision ``rev``, in a directory."""
    target = workdir / f"baseline-{services.slug(rev)}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {rev} failed: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def run(opts: Options) -> Report:
    report = Report(code=reports.code_version("core", "cli", "api", "ingest", "rules"))
    with reports.timed_run(report):
        workdir = services.make_workdir("bench-scale")
        file = workdir / "network.yaml"
        network_file(file, opts.meters, opts.partners, opts.balances)
        report.file_mib = file.stat().st_size / 2**20
        log(f"wrote {file} ({report.file_mib:.1f} MiB)")
        admin = system_postgres_url()
        template = f"symbiont_bench_scale_tpl_{os.getpid()}"
        create_migrated_template(admin, template)
        broker = Mosquitto(autosave_interval=60)
        broker.start()
        try:
            codes = [("this code", ROOT)]
            if opts.baseline:
                rev = services.describe(opts.baseline)
                codes.append((f"{opts.baseline} ({rev})", export_tree(opts.baseline, workdir)))
            for label, code in codes:
                log(f"measuring {label}")
                report.runs.append(measure(label, code, opts, file, template, broker.url, workdir))
            report.counts = report.runs[0].steps[0].note
        finally:
            broker.close()
            drop_database(admin, template)
    return report


def markdown(report: Report, opts: Options, info: dict[str, str]) -> str:
    out = [
        *reports.heading(
            SECTION,
            opts.command,
            report.code,
            info,
            "PostgreSQL, the broker and every command on this machine, one at a time.",
            broker=opts.services,
        ),
        "",
        f"The file: {report.counts.split('—', 1)[-1].strip()} ({report.file_mib:.0f} MiB of "
        "YAML, written by `network_file` in benchmarks/network_scale.py: minute meters, two "
        "per exchange, hubs with a balance over three meters; terms, rule overrides and "
        "Sparkplug B sources on some). Each command a process of its own; peak RSS is its "
        f"`ru_maxrss` (a service's VmHWM when it is ready). Goal: validate and apply each under "
        f"{TARGET_S:.0f} s and {TARGET_RSS_KIB // 1024:,} MiB; the services ready in seconds.",
        "",
    ]
    labels = [r.label for r in report.runs]
    out.append("| Step | " + " | ".join(f"{x}: wall s / CPU s / peak RSS" for x in labels) + " |")
    out.append("|---|" + "---:|" * len(labels))
    for i, step in enumerate(report.runs[0].steps):
        cells = []
        for r in report.runs:
            s = r.steps[i] if i < len(r.steps) else None
            if s is None:
                cells.append("–")
            elif s.wall_s == math.inf:
                cells.append(f"no answer within {REQUEST_TIMEOUT_S:.0f} s")
            else:
                cells.append(f"{s.wall_s:.1f} / {secs(s.cpu_s)} / {mib(s.peak_kib)}")
        out.append(f"| {step.name} | " + " | ".join(cells) + " |")
    notes = [f"{s.name}: {s.note}" for s in report.runs[0].steps[1:3] if s.note]
    if notes:
        out += ["", "What `network apply` printed: " + "; ".join(notes) + "."]
    out += ["", report.footer()]
    return "\n".join(out) + "\n"


def main(opts: Options) -> Report:
    info = reports.machine()
    report = run(opts)
    reports.publish(markdown(report, opts, info), opts.write, SECTION, stop="#")
    return report


# ---------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument("--meters", type=int, default=d.meters, help="meters (default %(default)s)")
    p.add_argument("--partners", type=int, default=None, help="partners (default meters / 50)")
    p.add_argument(
        "--balances", type=int, default=None, help="hubs with a balance (default meters / 150)"
    )
    p.add_argument(
        "--no-services", action="store_true", help="only validate and apply, no services"
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="also run every step with the code of this git revision (its whole tree), on a "
        "database of its own",
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """``file PATH [--meters N]``: only write the network file."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.network_scale")
    sub = p.add_subparsers(dest="role", required=True)
    f = sub.add_parser("file", help="write the benchmark's network file")
    f.add_argument("path", type=Path)
    f.add_argument("--meters", type=int, default=Options.meters)
    f.add_argument("--partners", type=int, default=None)
    f.add_argument("--balances", type=int, default=None)
    args = p.parse_args(argv)
    network_file(args.path, args.meters, args.partners, args.balances)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
