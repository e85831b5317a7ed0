"""Write simulated readings straight through the ingest batch writer (no broker): the fast
path the detection tests and the rules benchmarks use to fill a database with a month of
realistic data. The readings go through the same writer, dirty marking and partitions as
MQTT readings do."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cli.faults import Fault
from cli.simulate import MeterChunk, simulate
from core.network import Meter, Network
from core.units import conversion
from ingest.parse import NetworkIndex, Parsed
from ingest.writer import BatchWriter, Message


def simulated_message(piece: MeterChunk, meter: Meter) -> Message:
    """A simulated chunk of ``meter`` as the message the writer takes: its readings in the
    canonical unit, as if they had just come in on the meter's topic."""
    factor = conversion(piece.unit, meter.kind, meter.reading)
    readings = [
        (piece.meter_id, datetime.fromtimestamp(float(t), UTC), float(v) * factor)
        for t, v in zip(piece.ts, piece.value, strict=True)
    ]
    topic = f"symbiont/readings/{piece.partner_id}/{piece.meter_id}"
    return Message(Parsed(topic, piece.partner_id, readings), time.time())


async def write_simulation(
    dsn: str,
    net: Network,
    start: datetime,
    end: datetime,
    *,
    faults: Sequence[Fault] = (),
    seed: int = 0,
    batch: int = 50_000,
    chunk: timedelta = timedelta(days=1),
) -> int:
    """Simulate [start, end) and store it; returns the number of readings written."""
    index = NetworkIndex.from_network(net)
    writer = BatchWriter(dsn, application_name="symbiont-backfill")
    meters = {m.id: m for m in net.meters}
    pending: list[Message] = []
    size = written = 0
    try:
        for piece in simulate(net, start, end, faults=faults, seed=seed, chunk=chunk):
            pending.append(simulated_message(piece, meters[piece.meter_id]))
            size += piece.ts.size
            if size >= batch:
                written += (await writer.write(pending, index)).inserted
                pending, size = [], 0
        if pending:
            written += (await writer.write(pending, index)).inserted
    finally:
        await writer.close()
    return written
