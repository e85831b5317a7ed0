"""Statements: a month of statements for every partner of a 20-partner, 100-exchange network.

Issue goal (speed): all statements of a 20-partner, 100-exchange network for one month, JSON +
CSV + PDF, in under 10 s.

The network is the rules benchmark's (``benchmarks.rules_engine.bench_network``: hourly heat
exchanges in Europe/Copenhagen, one ``total`` sent meter and one received meter each, every
60 s) with terms added (``statements_network``): a price and the receiver's avoided cost and
CO2 from 1 January, and for every fifth exchange an indexation on 15 October, so those
exchanges get two lines (one per terms period) on both partners' statements. Each partner
takes part in 10 exchanges (5 as provider, 5 as receiver) when there are 100 exchanges and 20
partners, so its statement has 10–14 lines and a chart of 10 panels.

Setting up (not timed): a fresh database with the network applied; October 2026 (the 25-hour
DST day included) simulated by ``cli.simulate`` with the rules benchmark's faults and loaded
by ``cli.backfill.write_simulation`` (``--loader copy``: the rules benchmark's binary COPY,
faster, same rows); then the rules engine once over it, as ``symbiont rules --once`` does
(``Engine.process_pending`` and ``Engine.periodic`` at the end of the loaded span), then
``VACUUM ANALYZE`` and ``CHECKPOINT``.

Timed: ``statements.issue.issue_month(conn, net, 2026, 10, now)`` with ``now`` = the end of the
grace period (3 days after the month), in a process of its own (``python -m
benchmarks.statements issue``), the way ``symbiont rules`` issues a month: every partner's
statement computed, rendered as JSON, CSV and PDF, and stored with its delivery rows in the
outbox. Modules are imported before the clock starts; anything ``issue_month`` starts (PDF
worker processes) is inside the timed span. ``issue_month`` fills an ``IssueTimings`` with its
phases (compute, JSON/CSV, PDF, store), when the code measured has it. Between runs the
month's statements and their outbox rows are deleted (the benchmark database's session turns
the immutability triggers off with ``session_replication_role = replica``). Every run must
store the same bytes (documents, CSVs, PDFs): the harness compares them.

``--baseline REV`` also times ``issue_month`` from the ``core``, ``ingest`` and ``rules`` of git
revision REV on the same database and compares what both stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import BenchError, arguments, log, postgres, proc, reports, services  # noqa: E402
from benchmarks.harness.reports import secs  # noqa: E402
from benchmarks.rules_engine import (  # noqa: E402
    CODE_PATHS,
    TIMEZONE,
    MonthOptions,
    add_month_arguments,
    bench_network,
    load_month,
)
from core.db import asyncpg_dsn  # noqa: E402
from core.network import Network, parse_network  # noqa: E402
from core.settings import Settings  # noqa: E402

SECTION = "## Statements"
ON_MACHINE = "PostgreSQL and the harness on this machine."
TARGET_S = 10.0
YEAR, MONTH = 2026, 10  # the month issued: the one the rules benchmark simulates
GRACE = timedelta(days=3)


# --------------------------------------------------------------------------------- options


@dataclass
class Options(MonthOptions):
    loader: str = "writer"  # cli.backfill.write_simulation, or "copy"
    runs: int = 3
    workers: int | None = None  # issue_month's PDF processes (None: its default)
    quiet_wait: float = 10.0
    profile: Path | None = None  # py-spy flame graph of the first timed run
    baseline: str | None = None
    database_url: str | None = None  # a database this harness prepared before (--keep)
    keep: bool = False
    write: Path | None = ROOT / "BENCHMARKS.md"
    command: str = ""

    @property
    def issue_at(self) -> datetime:
        """When the month is issued: its end in the network's zone plus the grace period."""
        from zoneinfo import ZoneInfo

        from core.windows import month_bounds

        return month_bounds(YEAR, MONTH, ZoneInfo(TIMEZONE))[1] + GRACE


DESCRIPTION = "Statements: a month for every partner (benchmarks/statements.py)."
QUICK = {"days": 3, "runs": 1, "quiet_wait": 3.0}  # --quick: a smoke run


# --------------------------------------------------------------------------------- network


def statements_network(exchanges: int, partners: int) -> dict[str, Any]:
    """The rules benchmark's network with terms: from 1 January a price of 20–26 EUR/MWh and
    the receiver's avoided cost (35 EUR/MWh) and CO2 (0.226 t/MWh); every fifth exchange is
    indexed on 15 October (price +1.50), so its October is split in two lines."""
    raw = bench_network(exchanges, partners)
    raw["network"] = "bench-statements"
    raw["name"] = "Statements benchmark"
    for i, ex in enumerate(raw["exchanges"]):
        price = 20 + i % 7
        terms = [
            {
                "from": "2026-01-01",
                "price": f"{price}.00",
                "receiver_avoided_cost": "35.00",
                "receiver_avoided_co2": "0.226",
            }
        ]
        if i % 5 == 0:
            terms.append({**terms[0], "from": "2026-10-15", "price": f"{price + 1}.50"})
        ex["terms"] = terms
    return raw


# ------------------------------------------------------------------------------- preparing


@dataclass
class Prepared:
    url: str
    readings: int
    load_s: float
    engine_s: float
    exchange_windows: int
    statuses: dict[str, int] = field(default_factory=dict)
    reused: bool = False


def prepare(dbs: postgres.Databases, opts: Options) -> Prepared:
    url = dbs.fresh("statements")
    log(f"prepare: loading {opts.days} days of {len(dbs.network.meters)} meters ({opts.loader})")
    load = load_month(url, dbs.network, opts)
    log(f"prepare: {load.readings:,} readings in {load.seconds:.1f} s; rules engine once")
    began = time.perf_counter()
    asyncio.run(_rules_once(url, opts.end))
    engine_s = time.perf_counter() - began
    out = _describe_db(url)
    out.readings, out.load_s, out.engine_s = load.readings, load.seconds, engine_s
    log(f"prepare: engine {engine_s:.1f} s, {out.exchange_windows:,} exchange windows")
    return out


async def _rules_once(url: str, now: datetime) -> None:
    """What ``symbiont rules --once`` does before issuing, at ``now``."""
    from rules.engine import Engine

    engine = Engine(Settings(database_url=url))
    conn = await asyncpg.connect(engine.dsn)
    try:
        await engine.process_pending(conn, now=now)
        await engine.periodic(conn, now)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def _describe_db(url: str) -> Prepared:
    statuses = {
        r["status"]: r["n"]
        for r in postgres.fetch(
            url, "SELECT status, count(*) AS n FROM exchange_windows GROUP BY 1"
        )
    }
    readings = postgres.fetch(url, "SELECT count(*) AS n FROM readings")[0]["n"]
    return Prepared(url, readings, 0.0, 0.0, sum(statuses.values()), statuses)


_RESET = """
SET session_replication_role = replica;
DELETE FROM deliveries WHERE outbox_id IN
    (SELECT id FROM outbox WHERE event_key LIKE 'statement-%');
DELETE FROM outbox WHERE event_key LIKE 'statement-%';
DELETE FROM statements;
RESET session_replication_role;
"""


def reset(url: str) -> None:
    """Forget every issued statement (benchmark databases only: statements are immutable)."""
    postgres.execute(url, _RESET, "VACUUM ANALYZE statements, outbox")


# -------------------------------------------------------------------------- the timed run


def issue_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", required=True)
    p.add_argument("--now", required=True, type=datetime.fromisoformat)
    p.add_argument("--workers", type=int, default=None)


async def issue_run(database_url: str, now: datetime, workers: int | None) -> dict[str, Any]:
    """``issue_month`` once, timed (runs in its own process: ``python -m benchmarks.statements
    issue``)."""
    import statements.issue
    from core.apply import load_applied

    conn = await asyncpg.connect(
        asyncpg_dsn(database_url), server_settings={"application_name": "bench-statements"}
    )
    try:
        net = await load_applied(conn)
        if net is None:
            raise BenchError("no network applied")
        params = inspect.signature(statements.issue.issue_month).parameters
        kwargs: dict[str, Any] = {}
        timings = None
        if "timings" in params:
            timings = statements.issue.IssueTimings()
            kwargs["timings"] = timings
        if workers is not None and "workers" in params:
            kwargs["workers"] = workers
        if "accept_incomplete" in params:  # timed: issuing every statement, whatever its data
            kwargs["accept_incomplete"] = "benchmark"
        with proc.Span(conn.get_server_pid()) as span:
            issued = await statements.issue.issue_month(conn, net, YEAR, MONTH, now, **kwargs)
        helpers = proc.children_cpu(os.getpid())  # the PDF fork server, still alive
    finally:
        await conn.close()
    return {
        **span.figures(),
        "issued": len(issued),
        "new": sum(1 for i in issued if i.new),
        "timings": None if timings is None else asdict(timings),
        "helpers_cpu_s": helpers,
        "issue_file": statements.issue.__file__,
    }


def timed_issue(
    url: str, opts: Options, workdir: Path, label: str, code: Path | None = None
) -> dict[str, Any]:
    # Run as a script, as ``symbiont`` is: the PDF fork server then imports the main module
    # once for all its workers (a ``-m`` main would be imported again by every worker).
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "statements.py"), "issue",
        "--database-url", url, "--now", opts.issue_at.isoformat(),
    ]  # fmt: skip
    if opts.workers is not None:
        cmd += ["--workers", str(opts.workers)]
    if opts.profile is not None and code is None and label == "run-1":
        cmd = services.py_spy_record(cmd, opts.profile, "--subprocesses", "--rate", "100")
    env = services.clean_env()
    if code is not None:  # core, ingest, rules from ``code``; benchmarks and tests from here
        env["PYTHONPATH"] = os.pathsep.join([str(code), str(ROOT)])
    result = services.run_json(
        cmd, what="issue run", env=env, stderr_to=workdir / f"issue-{label}.log"
    )
    result["stored"] = stored_digest(url)
    return result


def stored_digest(url: str) -> dict[str, Any]:
    """What the run stored: counts, sizes, and one SHA-256 per column over all statements."""
    rows = postgres.fetch(
        url,
        "SELECT partner_id, document, content_hash, csv, pdf FROM statements "
        "WHERE month = $1 ORDER BY partner_id",
        f"{YEAR:04d}-{MONTH:02d}",
    )
    out: dict[str, Any] = {"statements": len(rows)}
    for col in ("document", "csv", "pdf"):
        h = hashlib.sha256()
        size = 0
        for r in rows:
            data = r[col].encode() if isinstance(r[col], str) else bytes(r[col])
            h.update(hashlib.sha256(data).digest())
            size += len(data)
        out[f"{col}_sha256"] = h.hexdigest()
        out[f"{col}_bytes"] = size
    out["lines"] = sum(len(orjson.loads(r["document"])["lines"]) for r in rows)
    out["outbox"] = postgres.fetch(
        url, "SELECT count(*) AS n FROM outbox WHERE event_key LIKE 'statement-%'"
    )[0]["n"]
    return out


# -------------------------------------------------------------------------------- running


@dataclass
class Report(reports.RunReport):
    prepared: Prepared | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    baseline_rev: str = ""


def run(opts: Options) -> Report:
    report = Report(code=reports.code_version(*CODE_PATHS))
    with reports.timed_run(report):
        run_issues(opts, report, services.make_workdir("sbench"))
    return report


def run_issues(opts: Options, report: Report, workdir: Path) -> None:
    net = parse_network(statements_network(opts.exchanges, opts.partners))
    dbs: postgres.Databases | None = None
    try:
        if opts.database_url:
            prepared = _describe_db(opts.database_url)
            prepared.reused = True
        else:
            dbs = postgres.Databases(net, "rbench")
            prepared = prepare(dbs, opts)
        report.prepared = prepared
        url = prepared.url
        for k in range(1, opts.runs + 1):
            reset(url)
            proc.wait_quiet(opts.quiet_wait)
            log(f"run {k}: issue_month for {opts.partners} partners")
            result = timed_issue(url, opts, workdir, f"run-{k}")
            _check(result, net)
            report.runs.append(result)
            log(f"run {k}: {result['wall_s']:.2f} s ({_phases(result)})")
        if opts.baseline:
            code = services.export_code(opts.baseline, workdir)
            reset(url)
            proc.wait_quiet(opts.quiet_wait)
            log(f"baseline: issue_month of {opts.baseline}")
            report.baseline = timed_issue(url, opts, workdir, "baseline", code)
            report.baseline_rev = services.describe(opts.baseline)
            _check(report.baseline, net)
            log(f"baseline: {report.baseline['wall_s']:.2f} s")
    finally:
        if dbs is not None:
            if opts.keep:
                dbs.created = [n for n in dbs.created if "statements" not in n]
                log(f"kept the database: {report.prepared.url if report.prepared else '?'}")
            dbs.close()


def _check(result: dict[str, Any], net: Network) -> None:
    stored = result["stored"]
    if result["new"] != len(net.partners) or stored["statements"] != len(net.partners):
        raise BenchError(
            f"issued {result['new']} new statements, stored {stored['statements']}, "
            f"expected {len(net.partners)}"
        )


# -------------------------------------------------------------------------------- output


def _phases(result: dict[str, Any]) -> str:
    t = result.get("timings")
    if not t:
        return "no phase timings in this code"
    return (
        f"compute {t['compute']:.2f} s, JSON/CSV {t['json_csv']:.2f} s, PDF {t['pdf']:.2f} s "
        f"in {t['workers']} process(es), waiting for PDFs {t['pdf_wait']:.2f} s, "
        f"store {t['store']:.2f} s"
    )


def _others(result: dict[str, Any]) -> float | None:
    t = result.get("timings") or {}
    return proc.others(
        result["machine_cpu_s"],
        result["cpu_s"],
        result["backend_cpu_s"],
        float(t.get("pdf_cpu", 0.0) or 0.0),
        float(result.get("helpers_cpu_s") or 0.0),
    )


def runs_table(report: Report) -> list[str]:
    out = [
        "| Run | Wall | Compute | JSON + CSV | PDF: rendering (summed) / processes / "
        "per PDF | Waiting for PDFs | Store | CPU s: issuing process / PDF rendering / PDF "
        "fork server / its PostgreSQL backend / everything else |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in enumerate(report.runs, start=1):
        out.append(_row(str(k), r))
    if report.baseline is not None:
        out.append(_row(f"baseline {report.baseline_rev}", report.baseline))
    return out


def _row(name: str, r: dict[str, Any]) -> str:
    t = r.get("timings")
    if t:
        per = t["pdf"] / t["pdfs"] if t["pdfs"] else None
        cells = [
            f"{t['compute']:.2f} s",
            f"{t['json_csv']:.2f} s",
            f"{t['pdf']:.2f} s / {t['workers']} / {secs(per, 2)} s",
            f"{t['pdf_wait']:.2f} s",
            f"{t['store']:.2f} s",
        ]
        workers = secs(t.get("pdf_cpu"))
    else:
        cells = ["–"] * 5
        workers = "–"
    cpu = (
        f"{r['cpu_s']:.1f} / {workers} / {secs(r.get('helpers_cpu_s'))} / "
        f"{secs(r['backend_cpu_s'])} / {secs(_others(r))}"
    )
    return f"| {name} | **{r['wall_s']:.2f} s** | " + " | ".join(cells) + f" | {cpu} |"


def markdown(report: Report, opts: Options, info: dict[str, str]) -> str:
    p = report.prepared
    assert p is not None
    walls = [r["wall_s"] for r in report.runs]
    median = statistics.median(walls) if walls else float("nan")
    verdict = "met" if walls and median < TARGET_S else "not met"
    first = report.runs[0]["stored"] if report.runs else {}
    same = all(r["stored"] == first for r in report.runs)
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(p.statuses.items()))
    prep = (
        f"a database prepared earlier by this harness ({p.readings:,} readings, "
        f"{p.exchange_windows:,} exchange windows: {statuses})"
        if p.reused
        else f"{p.readings:,} readings loaded in {p.load_s:.0f} s "
        f"({'`cli.backfill.write_simulation`' if opts.loader == 'writer' else 'binary COPY'}),"
        f" the rules engine once over them in {p.engine_s:.0f} s ({p.exchange_windows:,} "
        f"exchange windows: {statuses}), then `VACUUM ANALYZE` and `CHECKPOINT`"
    )
    out = [
        *reports.heading(SECTION, opts.command, report.code, info, ON_MACHINE, broker=False),
        "",
        f"Network (`benchmarks.statements.statements_network`): {opts.partners} partners, "
        f"{opts.exchanges} hourly heat exchanges in {TIMEZONE} (the rules benchmark's, with "
        "terms; every fifth exchange indexed on 15 October, so its month has two lines), "
        f"{2 * opts.exchanges} meters reading every 60 s; "
        + ("faults as in the rules benchmark" if opts.faults else "no faults")
        + f". Data: 2026-10-01 – {opts.end:%Y-%m-%d} UTC, seed {opts.seed}: {prep}.",
        "",
        f"Timed: `statements.issue.issue_month(conn, net, {YEAR}, {MONTH}, now="
        f"{opts.issue_at.isoformat().replace('+00:00', 'Z')})` in a process of its own, "
        f"{len(report.runs)} run(s), the month's statements deleted before each. Each run "
        f"issued {first.get('statements', 0)} statements ({first.get('lines', 0)} lines): "
        f"JSON {first.get('document_bytes', 0) / 1024:,.0f} KiB, CSV "
        f"{first.get('csv_bytes', 0) / 1024:,.0f} KiB, PDF "
        f"{first.get('pdf_bytes', 0) / 1024:,.0f} KiB in all, and {first.get('outbox', 0)} "
        "outbox rows.",
        "",
        *runs_table(report),
        "",
        f"- Target: every statement of the month, JSON + CSV + PDF, in under {TARGET_S:.0f} s: "
        f"**{verdict}** (median of {len(walls)} run(s): {median:.2f} s).",
        "- Phases, as `issue_month` measures them (`statements.issue.IssueTimings`): *compute* is "
        "reading windows, alerts and earlier statements and building the documents; *PDF* "
        "is the rendering time summed over the statements, in worker processes beside the "
        "issuing one; *waiting for PDFs* is the part of the wall time the issuing process "
        "spent waiting for them; *store* is inserting the statements and their outbox rows "
        "(one transaction per partner). The phases overlap, so they do not add up to the wall "
        "time. CPU: *PDF rendering* is the workers' CPU time inside `render_pdf`; the *PDF fork "
        "server* imports the renderer (and the main module) once per process and forks the "
        "workers; *everything else* is the rest of the machine meanwhile (other work, "
        "PostgreSQL's background processes, the workers outside `render_pdf`): a run with "
        "several seconds of it was disturbed.",
        "- Every run stored the same bytes (documents, CSVs, PDFs): "
        + ("**yes**." if same else "**no**."),
    ]
    if report.baseline is not None:
        b = report.baseline["stored"]
        cols = [c for c in ("document", "csv", "pdf") if b[f"{c}_sha256"] == first[f"{c}_sha256"]]
        out.append(
            f"- Baseline: `issue_month` of commit {report.baseline_rev} on the same database: "
            f"**{report.baseline['wall_s']:.2f} s**. Identical to this code's: "
            + (", ".join({"document": "documents", "csv": "CSVs", "pdf": "PDFs"}[c] for c in cols)
               or "nothing")
            + "."
        )  # fmt: skip
    out += ["", report.footer()]
    return "\n".join(out) + "\n"


def main(opts: Options) -> Report:
    info = reports.machine()
    report = run(opts)
    reports.publish(markdown(report, opts, info), opts.write, SECTION)
    return report


# ---------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    add_month_arguments(p, d)
    p.add_argument("--runs", type=int, default=d.runs, help="timed runs (default %(default)s)")
    p.add_argument(
        "--workers", type=int, default=None, help="PDF worker processes (default: issue_month's)"
    )
    arguments.add_baseline_arguments(
        p,
        "also time issue_month of this git revision (core, ingest, rules) on the same "
        "database, and compare what both stored",
        "record a py-spy flame graph (SVG) of the first timed run, PDF workers included",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="time against a database this harness prepared before (see --keep) instead of "
        "preparing a new one",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the prepared database (its URL is logged)"
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """``issue``: the timed run, as a process of its own; prints one JSON line."""
    run = lambda a: asyncio.run(issue_run(a.database_url, a.now, a.workers))  # noqa: E731
    return services.role_main(
        "python -m benchmarks.statements", {"issue": (issue_arguments, run)}, argv
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(cli())
