"""The ``symbiont`` command line."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core import logs
from core.db import ConfigError
from core.settings import Settings, get_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from core.db import upgrade

    upgrade(settings.database_url, args.revision)
    print(f"database at revision {args.revision}")
    return 0


def _db_prune(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from core.db import connect
    from rules.retention import prune

    keep = settings.readings_retention_days
    if keep is None:
        raise ValueError("SYMBIONT_READINGS_RETENTION_DAYS is not set: readings are kept for ever")

    async def go() -> Any:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            return await prune(conn, keep, datetime.now(UTC), backfill_days=settings.backfill_days)
        finally:
            await conn.close()

    pruned = asyncio.run(go())
    print(
        f"dropped {len(pruned.partitions)} reading partitions"
        f" ({', '.join(pruned.partitions) or 'none'}) and {pruned.rejections} rejections"
    )
    return 0


def _network_validate(args: argparse.Namespace, settings: Settings) -> int:
    from core.network import load_network

    net = load_network(args.file)
    print(
        f"{args.file}: ok — network '{net.network}', {len(net.partners)} partners, "
        f"{len(net.meters)} meters, {len(net.exchanges)} exchanges, {len(net.balances)} balances"
    )
    return 0


def _network_apply(args: argparse.Namespace, settings: Settings) -> int:
    from core.apply import apply_network
    from core.db import connect
    from core.network import load_network

    net = load_network(args.file)

    async def go() -> str:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            return (await apply_network(conn, net)).summary()
        finally:
            await conn.close()

    print(f"network '{net.network}' applied: {asyncio.run(go())}")
    return 0


def _network_show(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from core.apply import load_applied
    from core.db import connect

    async def go() -> object:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            return await load_applied(conn)
        finally:
            await conn.close()

    net = asyncio.run(go())
    if net is None:
        print("no network applied yet: run `symbiont network apply FILE`", file=sys.stderr)
        return 1
    from core.network import Network, format_duration

    assert isinstance(net, Network)
    console = Console()
    console.print(f"[bold]{net.name}[/] ({net.network}), {net.timezone}, {net.currency}")
    table = Table("exchange", "provider → receiver", "kind", "sent", "received", "loss", "window")
    for ex in net.exchanges:
        table.add_row(
            ex.id,
            f"{ex.provider} → {ex.receiver}",
            ex.kind.value,
            ", ".join(ex.sent),
            ", ".join(ex.received),
            f"{ex.loss:.1%}",
            format_duration(ex.window),
        )
    console.print(table)
    return 0


def _network_docs(args: argparse.Namespace, settings: Settings) -> int:
    from core.network_docs import render

    text = render()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.service import run

    return run(settings, client_id=args.client_id)


def _rules(args: argparse.Namespace, settings: Settings) -> int:
    from rules.service import run
    from statements.issue import issue_statements

    return run(settings, once=args.once, worker_id=args.worker_id, issue=issue_statements)


def _statements_issue(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from core.apply import load_applied
    from core.db import connect
    from statements.compute import parse_month
    from statements.issue import IncompleteMonth, Issued, issue_month

    year, month = parse_month(args.month)
    reason = _incomplete_reason(args)

    async def go() -> list[Issued]:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            net = await load_applied(conn)
            if net is None:
                raise ValueError("no network applied yet: run `symbiont network apply FILE`")
            return await issue_month(
                conn,
                net,
                year,
                month,
                datetime.now(UTC),
                settings=settings,
                accept_incomplete=reason,
            )
        finally:
            await conn.close()

    try:
        issued = asyncio.run(go())
    except IncompleteMonth as exc:
        for item in exc.issued:
            _print_issued(item)
        for held in exc.held:
            print(f"{held.partner} {held.month}: held, data incomplete: {held.describe()}")
        print(
            f"symbiont: {exc.headline}; issue them anyway with --accept-incomplete --reason TEXT"
            " (the reason is printed on each)",
            file=sys.stderr,
        )
        return 1
    for item in issued:
        _print_issued(item)
    return 0


def _incomplete_reason(args: argparse.Namespace) -> str | None:
    """``--reason`` of ``--accept-incomplete`` (both or neither)."""
    reason: str | None = args.reason
    if args.accept_incomplete and not (reason and reason.strip()):
        raise ValueError("--accept-incomplete needs --reason TEXT (it is printed on the statement)")
    if reason is not None and not args.accept_incomplete:
        raise ValueError("--reason goes with --accept-incomplete")
    return reason.strip() if reason is not None else None


def _print_issued(item: Any) -> None:
    state = "issued" if item.new else "already issued"
    if item.revision > 1:
        state += f" (revision {item.revision})"
    number = f", document {item.document_number}" if item.document_number else ""
    print(f"{item.partner} {item.month}: {state}{number}, content hash {item.content_hash}")
    if item.incomplete_reason:
        print(f"  issued with incomplete data: {item.incomplete_reason}")


def _statements_revise(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from core.apply import load_applied
    from core.db import connect
    from statements.compute import parse_month
    from statements.issue import IncompleteMonth, Issued
    from statements.revise import revise_statement

    year, month = parse_month(args.month)
    if not args.reason.strip():
        raise ValueError("--reason must say why the statement is revised")

    async def go() -> Issued:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            net = await load_applied(conn)
            if net is None:
                raise ValueError("no network applied yet: run `symbiont network apply FILE`")
            return await revise_statement(
                conn,
                net,
                args.partner,
                year,
                month,
                datetime.now(UTC),
                args.reason,
                accept_incomplete=args.accept_incomplete,
                settings=settings,
            )
        finally:
            await conn.close()

    try:
        item = asyncio.run(go())
    except IncompleteMonth as exc:
        for held in exc.held:
            print(f"{held.partner} {held.month}: data incomplete: {held.describe()}")
        print(
            f"symbiont: not revised: the data of {exc.month} is incomplete; revise anyway with"
            " --accept-incomplete (the reason is printed on the statement)",
            file=sys.stderr,
        )
        return 1
    _print_issued(item)
    print(f"  reason: {args.reason.strip()}")
    return 0


def _statements_show(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from core.apply import load_applied
    from core.db import connect
    from statements import csv_export, document
    from statements.compute import parse_month
    from statements.issue import document_for, render_pdf_for

    parse_month(args.month)  # a clear error for a bad month before anything else

    async def go() -> bytes:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            net = await load_applied(conn)
            if net is None:
                raise ValueError("no network applied yet: run `symbiont network apply FILE`")
            if args.partner not in {p.id for p in net.partners}:
                raise ValueError(f"unknown partner '{args.partner}'")
            try:
                doc, csv, pdf = await document_for(
                    conn,
                    net,
                    args.partner,
                    args.month,
                    datetime.now(UTC),
                    grace=settings.statement_grace,
                    revision=args.revision,
                )
            except LookupError as exc:
                raise ValueError(str(exc)) from None
            if args.format == "csv":
                return csv or csv_export.render_csv(doc).encode()
            if args.format == "pdf":
                return pdf or await render_pdf_for(conn, net, doc)
            return document.render_json(doc)
        finally:
            await conn.close()

    data = asyncio.run(go())
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output} ({len(data):,} bytes)", file=sys.stderr)
    elif args.format == "pdf" and sys.stdout.isatty():
        raise ValueError("a PDF is binary: use --output FILE (or redirect stdout)")
    else:
        sys.stdout.buffer.write(data)
        if args.format == "json":
            sys.stdout.buffer.write(b"\n")
    return 0


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from cli import publish

    return publish.run(args, settings)


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from ingest import importer

    return importer.run(args, settings)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from cli import demo

    return demo.run(args, settings)


def _broker_config(args: argparse.Namespace, settings: Settings) -> int:
    from cli import brokerconfig

    return brokerconfig.run(args)


def _api(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import serve

    return serve(settings, host=args.host, port=args.port)


def _token_create(args: argparse.Namespace, settings: Settings) -> int:
    from api.tokens import create_token
    from core.db import connect

    async def go() -> Any:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            return await create_token(conn, args.role, args.partner, args.name or "")
        finally:
            await conn.close()

    created = asyncio.run(go())
    scope = f" for partner {created.partner}" if created.partner else ""
    print(
        f"token {created.id} ({created.role.value}{scope}); shown once, keep it safe:",
        file=sys.stderr,
    )
    print(created.token)
    return 0


def _token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from api.tokens import revoke_token
    from core.db import connect

    async def go() -> bool:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            return await revoke_token(conn, args.id)
        finally:
            await conn.close()

    if not asyncio.run(go()):
        raise ValueError(f"no active token with id {args.id}")
    print(f"token {args.id} revoked")
    return 0


_BIGINT_MAX = 2**63 - 1  # ids are PostgreSQL bigints


def _token_id(text: str) -> int:
    """A token id as the command line gives it: ASCII digits, 1 to the largest bigint."""
    if re.fullmatch(r"[0-9]{1,19}", text, re.ASCII) is None or not 1 <= int(text) <= _BIGINT_MAX:
        raise argparse.ArgumentTypeError(
            f"a token id is a whole number from 1 to {_BIGINT_MAX} (ASCII digits), not {text!r}"
        )
    return int(text)


def _silence_id(text: str) -> int:
    try:
        return _token_id(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"a silence id is a whole number from 1 to {_BIGINT_MAX}, not {text!r}"
        ) from None


def _month_arg(text: str) -> str:
    """``YYYY-MM`` in ASCII digits (``int()`` alone would take "２０２６-11" or "2026-+1")."""
    match = re.fullmatch(r"([0-9]{4})-([0-9]{2})", text, re.ASCII)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise argparse.ArgumentTypeError(f"bad month {text!r} (use YYYY-MM, e.g. 2026-10)")
    return text


def _token_list(args: argparse.Namespace, settings: Settings) -> int:
    from core.db import connect

    async def go() -> list[Any]:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            return list(
                await conn.fetch(
                    "SELECT id, role, partner_id, name, created_at, revoked_at, last_used_at"
                    " FROM api_tokens ORDER BY id"
                )
            )
        finally:
            await conn.close()

    for row in asyncio.run(go()):
        state = f"revoked {row['revoked_at']:%Y-%m-%d}" if row["revoked_at"] else "active"
        partner = f" partner={row['partner_id']}" if row["partner_id"] else ""
        name = f" {row['name']!r}" if row["name"] else ""
        print(
            f"{row['id']:>5} {row['role']:<11}{partner}{name} created"
            f" {row['created_at']:%Y-%m-%d %H:%M} {state}"
        )
    return 0


def _silences_list(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from core.db import connect
    from notify import silences

    async def go() -> tuple[list[Any], dict[int, int]]:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            found = await silences.listing(
                conn, datetime.now(UTC), state=args.state, limit=args.limit
            )
            return found, await silences.muted_counts(conn, [s.id for s in found])
        finally:
            await conn.close()

    found, counts = asyncio.run(go())
    now = datetime.now(UTC)
    for s in found:
        matchers = " ".join(f"{m.name}={m.value}" for m in s.matchers)
        expired = f", expired by {s.expired_by}" if s.expired_by else ""
        print(
            f"{s.id:>5} {s.state(now):<8} {matchers}  {s.starts_at:%Y-%m-%d %H:%M} →"
            f" {s.ends_at:%Y-%m-%d %H:%M} UTC  by {s.created_by}{expired};"
            f" {counts.get(s.id, 0)} deliveries muted: {s.comment}"
        )
    if not found:
        print("no silences", file=sys.stderr)
    return 0


def _silences_add(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from core.apply import load_applied
    from core.db import connect
    from notify import silences
    from rules.alerts import ALERT_RULES

    now = datetime.now(UTC)
    starts = args.starts or now
    if (args.ends is None) == (args.duration is None):
        raise ValueError("give either --ends TIME or --duration (e.g. 2h)")
    ends = args.ends or starts + args.duration
    matchers = list(args.matcher)
    problems = [msg for _, msg in silences.problems(matchers, starts, ends, args.comment, now)]

    async def go() -> Any:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            net = await load_applied(conn)
            if net is None:
                raise ValueError("no network applied yet: run `symbiont network apply FILE`")
            problems.extend(silences.value_problems(matchers, net, ALERT_RULES))
            if problems:
                raise ValueError("; ".join(problems))
            return await silences.create(conn, matchers, starts, ends, args.comment.strip(), by)
        finally:
            await conn.close()

    by = args.by or _cli_user()
    created = asyncio.run(go())
    print(
        f"silence {created.id} ({created.state(now)}) until {created.ends_at.isoformat()}",
        file=sys.stderr,
    )
    print(created.id)
    return 0


def _silences_delete(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from core.db import connect
    from notify import silences

    async def go() -> Any:
        conn = await connect(settings.database_url, application_name="symbiont-cli")
        try:
            return await silences.expire(conn, args.id, args.by or _cli_user(), datetime.now(UTC))
        finally:
            await conn.close()

    expired = asyncio.run(go())
    if expired is None:
        raise ValueError(f"no silence with id {args.id}")
    print(f"silence {args.id} expired at {expired.ends_at.isoformat()}")
    return 0


def _cli_user() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):
        return "command line"


def _matcher_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not value:
        raise argparse.ArgumentTypeError(
            f"a matcher is NAME=VALUE with NAME rule, subject or partner, not {text!r}"
        )
    return name.strip(), value.strip()


def _time_arg(text: str) -> Any:
    from datetime import datetime

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"a time is RFC 3339 with an offset (e.g. 2026-10-01T06:00:00Z), not {text!r}"
        )
    return value


def _duration_arg(text: str) -> Any:
    from datetime import timedelta

    match = re.fullmatch(r"([0-9]{1,6})([mhd])", text.strip(), re.ASCII)
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"a duration is like 90m, 2h or 3d, not {text!r}")
    unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symbiont",
        description="Monitor an industrial symbiosis network: ingest, reconcile, report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run everything on this machine with embedded defaults")
    demo.add_argument(
        "--network",
        type=Path,
        default=None,
        help="network file (default: the bundled Kalundborg example)",
    )
    demo.add_argument(
        "--days",
        type=int,
        default=None,
        help="days of history to backfill (default: since the start of the previous month)",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.set_defaults(handler=_demo)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    up = db.add_parser("upgrade", help="apply migrations (Alembic)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(handler=_db_upgrade)
    prune = db.add_parser(
        "prune", help="drop raw readings older than SYMBIONT_READINGS_RETENTION_DAYS now"
    )
    prune.set_defaults(handler=_db_prune)

    network = sub.add_parser("network", help="the network file").add_subparsers(
        dest="network", required=True
    )
    validate = network.add_parser("validate", help="check a network file")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=_network_validate)
    apply = network.add_parser("apply", help="load a network file into the database")
    apply.add_argument("file", type=Path)
    apply.set_defaults(handler=_network_apply)
    show = network.add_parser("show", help="show the applied network")
    show.set_defaults(handler=_network_show)
    docs = network.add_parser("docs", help="the network file's reference, in Markdown")
    docs.add_argument("--output", "-o", default=None, help="write to this file")
    docs.set_defaults(handler=_network_docs)

    ingest = sub.add_parser("ingest", help="subscribe to readings and store them")
    ingest.add_argument(
        "--client-id", default=None, help="MQTT client id (each ingest worker needs its own)"
    )
    ingest.set_defaults(handler=_ingest)

    rules = sub.add_parser("rules", help="reconcile windows and raise alerts")
    rules.add_argument("--once", action="store_true", help="process everything pending, then exit")
    rules.add_argument("--worker-id", default=None, help="name of this worker in claims")
    rules.set_defaults(handler=_rules)

    simulate = sub.add_parser("simulate", help="publish realistic readings for a network")
    from cli import publish

    publish.add_arguments(simulate)
    simulate.set_defaults(handler=_simulate)

    statements = sub.add_parser("statements", help="monthly statements").add_subparsers(
        dest="statements", required=True
    )
    issue = statements.add_parser("issue", help="issue every partner's statement for a month")
    issue.add_argument("month", type=_month_arg, help="YYYY-MM, in the network's time zone")
    issue.add_argument(
        "--accept-incomplete",
        action="store_true",
        help="issue statements whose data is incomplete too (needs --reason)",
    )
    issue.add_argument(
        "--reason", default=None, help="why incomplete data is accepted (printed on them)"
    )
    issue.set_defaults(handler=_statements_issue)
    revise = statements.add_parser(
        "revise", help="issue a new revision of a partner's issued statement"
    )
    revise.add_argument("partner")
    revise.add_argument("month", type=_month_arg, help="YYYY-MM")
    revise.add_argument("--reason", required=True, help="why (printed on the revision)")
    revise.add_argument(
        "--accept-incomplete",
        action="store_true",
        help="revise even if the month's data is incomplete",
    )
    revise.set_defaults(handler=_statements_revise)
    show = statements.add_parser(
        "show", help="a partner's statement (issued: its latest revision; else the draft)"
    )
    show.add_argument("partner")
    show.add_argument("month", type=_month_arg, help="YYYY-MM")
    show.add_argument(
        "--revision", type=int, default=None, help="an earlier revision of an issued statement"
    )
    show.add_argument("--format", choices=("json", "csv", "pdf"), default="json")
    show.add_argument("--output", "-o", default=None, help="write to this file")
    show.set_defaults(handler=_statements_show)

    api = sub.add_parser("api", help="serve the HTTP API and the dashboard")
    api.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default 8000)")
    api.set_defaults(handler=_api)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token", required=True)
    create = token.add_parser("create", help="make a token (shown once)")
    create.add_argument(
        "--role", required=True, choices=("admin", "operator", "partner", "integration")
    )
    create.add_argument("--partner", default=None, help="the partner (partner role only)")
    create.add_argument("--name", default=None, help="a note on who or what uses it")
    create.set_defaults(handler=_token_create)
    revoke = token.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", type=_token_id)
    revoke.set_defaults(handler=_token_revoke)
    token.add_parser("list", help="list tokens (never their secrets)").set_defaults(
        handler=_token_list
    )

    silence = sub.add_parser("silences", help="mute the delivery of alerts").add_subparsers(
        dest="silences", required=True
    )
    slist = silence.add_parser("list", help="silences, newest first")
    slist.add_argument("--state", choices=("pending", "active", "expired"), default=None)
    slist.add_argument("--limit", type=int, default=50)
    slist.set_defaults(handler=_silences_list)
    sadd = silence.add_parser(
        "add", help="mute the alerts every matcher selects (they still fire and are recorded)"
    )
    sadd.add_argument(
        "--matcher",
        "-m",
        type=_matcher_arg,
        action="append",
        required=True,
        help="NAME=VALUE, NAME one of rule, subject, partner (repeat: all must match)",
    )
    sadd.add_argument("--starts", type=_time_arg, default=None, help="RFC 3339 (default now)")
    sadd.add_argument("--ends", type=_time_arg, default=None, help="RFC 3339")
    sadd.add_argument("--duration", type=_duration_arg, default=None, help="e.g. 90m, 2h, 3d")
    sadd.add_argument("--comment", required=True, help="why")
    sadd.add_argument("--by", default=None, help="who (default: this user)")
    sadd.set_defaults(handler=_silences_add)
    sdel = silence.add_parser("delete", help="expire a silence now (it is kept as a record)")
    sdel.add_argument("id", type=_silence_id)
    sdel.add_argument("--by", default=None, help="who (default: this user)")
    sdel.set_defaults(handler=_silences_delete)

    broker = sub.add_parser(
        "broker-config", help="Mosquitto users, passwords and ACL for a network file"
    )
    from cli import brokerconfig

    brokerconfig.add_arguments(broker)
    broker.set_defaults(handler=_broker_config)

    imp = sub.add_parser("import", help="backfill readings from a CSV file")
    imp.add_argument("csv", type=Path, help="CSV with columns meter, ts, value[, unit]")
    imp.add_argument("--batch", type=int, default=20000, help="readings per transaction")
    imp.set_defaults(handler=_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's ValidationError names the variable
        print(f"symbiont: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, json_lines=settings.log_json)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except ConfigError as exc:
        print(f"symbiont: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from core.network import NetworkError

        if isinstance(exc, NetworkError):
            print("symbiont: the network file has problems:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        if isinstance(exc, OSError | ValueError):
            print(f"symbiont: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
