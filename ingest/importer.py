"""``symbiont import CSV``: backfill readings from a CSV export (meter, ts, value[, unit]).

Rows go through the same checks as MQTT readings and the same batch writer, so duplicates,
conflicts and rejections behave exactly as for live data (rejections are kept with the
topic ``import:<file name>``). A rich progress bar follows the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from core.db import asyncpg_dsn, require_database_url
from core.settings import Settings
from ingest.parse import Parser
from ingest.service import load_index
from ingest.writer import BatchWriter, Message

REQUIRED = ("meter", "ts", "value")


class CsvImportError(ValueError):
    """The CSV cannot be imported at all (missing columns, unreadable file)."""


@dataclass
class ImportReport:
    rows: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


def _count_rows(path: Path) -> int:
    with path.open("rb") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


async def import_csv(
    path: Path, settings: Settings, *, batch: int = 20000, progress: Progress | None = None
) -> ImportReport:
    dsn = asyncpg_dsn(require_database_url(settings.database_url))
    conn = await asyncpg.connect(dsn)
    try:
        index = await load_index(conn)
    finally:
        await conn.close()
    if index is None:
        raise CsvImportError("no network applied yet: run `symbiont network apply FILE` first")
    parser = Parser(
        index,
        max_payload=settings.max_payload_bytes,
        backfill_days=settings.backfill_days,
        future_tolerance_s=settings.future_tolerance_s,
    )
    try:
        reader = pd.read_csv(
            path, dtype=str, chunksize=batch, keep_default_na=False, skipinitialspace=True
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CsvImportError(f"{path}: cannot read as CSV ({exc})") from None
    report = ImportReport()
    writer = BatchWriter(dsn, application_name="symbiont-import")
    source = f"import:{path.name}"
    task = (
        progress.add_task(f"importing {path.name}", total=_count_rows(path)) if progress else None
    )
    line = 1
    try:
        for chunk in reader:
            columns = [str(c).strip().lower() for c in chunk.columns]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise CsvImportError(
                    f"{path}: missing column(s) {', '.join(missing)}; "
                    f"expected meter, ts, value[, unit], found {', '.join(columns)}"
                )
            chunk.columns = columns
            units = chunk["unit"] if "unit" in columns else [None] * len(chunk)
            now = time.time()
            messages = []
            for meter_id, ts, value, unit in zip(
                chunk["meter"], chunk["ts"], chunk["value"], units, strict=True
            ):
                line += 1
                parsed = parser.parse_row(
                    source,
                    meter_id.strip(),
                    ts.strip(),
                    value.strip(),
                    unit.strip() if unit else None,
                    now,
                    line,
                )
                messages.append(Message(parsed, now))
            result = await writer.write(messages, index)
            report.rows += len(messages)
            report.stored += result.inserted
            report.duplicates += result.duplicates
            report.rejected.update(result.rejections)
            if progress is not None and task is not None:
                progress.advance(task, len(messages))
    finally:
        await writer.close()
    return report


def run(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.csv
    if not path.is_file():
        raise CsvImportError(f"{path}: no such file")
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        report = asyncio.run(import_csv(path, settings, batch=args.batch, progress=progress))
    rejected = ", ".join(f"{n} {reason}" for reason, n in report.rejected.most_common())
    console.print(
        f"{report.rows} rows: {report.stored} readings stored, {report.duplicates} duplicates, "
        f"{sum(report.rejected.values())} rejected" + (f" ({rejected})" if rejected else "")
    )
    return 0 if not report.rejected else 1
