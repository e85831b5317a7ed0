"""Rendering the PDFs of a month's statements beside the issuing process: worker processes forked
from a fork server that has imported the renderer (a thread where there is none), and where the
time went (:class:`IssueTimings`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from statements.compute import DailySeries
from statements.pdf import render_pdf_timed

log = logging.getLogger("symbiont.statements")


@dataclass
class IssueTimings:
    """Where :func:`issue_month`'s time went, in seconds (pass one in to have it filled).

    The phases overlap (PDFs render in worker processes while the issuing process computes
    and stores), so they do not add up to the wall time."""

    compute: float = 0.0  # reading windows, alerts and issued statements; building documents
    json_csv: float = 0.0  # rendering JSON and CSV
    pdf: float = 0.0  # rendering PDFs, summed over the statements, wherever they rendered
    pdf_cpu: float = 0.0  # CPU seconds of that rendering
    pdf_wait: float = 0.0  # the issuing process waiting for PDFs (worker start-up included)
    store: float = 0.0  # inserting statements and outbox rows, committing
    pdfs: int = 0
    workers: int = 0  # processes rendering PDFs (0: a thread of the issuing process)


def pdf_workers(statements: int) -> int:
    """Worker processes for rendering ``statements`` PDFs: one per CPU this process may run
    on, no more than there are PDFs; 0 (render in a thread) when that is one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    n = min(cpus, statements)
    return n if n > 1 else 0


class _PdfRenderer:
    """Renders statement PDFs in worker processes, or in a thread of this process when there
    is one worker or no processes can be started.

    The workers are forked from a fork server that has imported the renderer (and the main
    module) once, so a worker starts in milliseconds and the parent's threads and event loop
    are never forked. A PDF is a pure function of its inputs, so it is the same bytes
    wherever it is rendered."""

    def __init__(self, workers: int, timings: IssueTimings) -> None:
        self.timings = timings
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            try:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["__main__", "statements.pdf"])
                # the server imports the renderer while this process reads the database
                multiprocessing.forkserver.ensure_running()
                self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
            except (OSError, ValueError) as exc:  # no fork server here: render in a thread
                log.warning("rendering PDFs in this process (%s)", exc)
        timings.workers = workers if self.pool is not None else 0

    def submit(self, doc: dict[str, Any], daily: list[DailySeries]) -> _PdfJob:
        future: concurrent.futures.Future[tuple[bytes, float, float]] | None = None
        if self.pool is not None:
            with contextlib.suppress(BrokenProcessPool, RuntimeError):
                future = self.pool.submit(render_pdf_timed, doc, daily)
        return _PdfJob(self, doc, daily, future)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


@dataclass
class _PdfJob:
    renderer: _PdfRenderer
    doc: dict[str, Any]
    daily: list[DailySeries]
    future: concurrent.futures.Future[tuple[bytes, float, float]] | None

    async def result(self) -> bytes:
        t = self.renderer.timings
        began = time.perf_counter()
        if self.future is not None:
            try:
                pdf, wall, cpu = await asyncio.wrap_future(self.future)
            except BrokenProcessPool as exc:  # a worker died: render this one here
                log.warning("PDF worker failed (%s); rendering in this process", exc)
                self.future = None
        if self.future is None:
            # one at a time, off the event loop (a PDF takes a third of a second or more)
            pdf, wall, cpu = await asyncio.to_thread(render_pdf_timed, self.doc, self.daily)
        t.pdf_wait += time.perf_counter() - began
        t.pdf += wall
        t.pdf_cpu += cpu
        t.pdfs += 1
        return pdf
