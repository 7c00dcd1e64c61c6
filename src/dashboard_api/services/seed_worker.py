"""The seed's producer on PostgreSQL, in a process of its own.

Generating a block of tasks, encoding its COPY rows and summing its rollups is CPU work
in this process's Python; loading the previous block is CPU work in PostgreSQL's backend.
In a thread the two shared one interpreter (the GIL) and so at most about one core; in a
process of its own the producer runs beside the backend on the second core while the
seeding process only passes the COPY data along. Blocks go through a pipe (the producer
waits while the loader is a block behind, so memory holds a few blocks); the rollup rows
are spilled to files in a directory that the loader owns and copies in at the end.
"""

from __future__ import annotations

import multiprocessing
import traceback
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from dashboard_api.services.analytics.streamed import (
    REASONS,
    STATUS_CODES,
    RollupArrays,
    TaskArrays,
)
from dashboard_api.services.analytics.streamed_write import RollupSink
from dashboard_api.services.leases import REPORTED_BY_AGENT
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed_copy import event_rows, task_rows
from dashboard_api.services.seed_data import (
    AGENT_TYPES,
    MODELS,
    SOURCES,
    STATUSES,
    TaskBlock,
    blocks,
)

_AGENT_REASON = REASONS.index(REPORTED_BY_AGENT) if REPORTED_BY_AGENT in REASONS else -1
_FAILED = STATUSES.index("failed")


def new_rollups() -> RollupArrays:
    return RollupArrays(AGENT_TYPES, SOURCES, MODELS)


def figures(block: TaskBlock) -> TaskArrays:
    """What the rollups sum of a block of tasks."""
    failed = block.status == _FAILED
    return TaskArrays(
        created_s=block.created // 1_000_000,
        agent=block.agent,
        source=block.source,
        model=block.model,
        reason=np.where(failed, _AGENT_REASON, -1),
        status=STATUS_CODES[block.status],
        figures=np.column_stack((block.cost, block.tokens)),
        duration_us=block.duration,
        timed=block.timed,
        first_output_us=block.first_output - block.started,
        has_first=block.has_started,
    )


@dataclass(frozen=True)
class Job:
    n: int
    now: datetime
    days: int
    prices: PriceTable
    seed: int | None
    rollups: bool  # sum them (into spill files in `directory`)
    directory: str
    chunk: int


class Producer:
    """A running producer: `next` gives (tasks, task rows, event rows) of each block, then
    None; `spilled` the rollups' spill files once it has."""

    def __init__(self, job: Job) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self._process = context.Process(target=_run, args=(child, job), daemon=True)
        self._process.start()
        child.close()
        self.spilled: list[tuple[str, str]] = []

    def next(self) -> tuple[int, bytes, bytes] | None:
        """The next block (blocking)."""
        try:
            message = self._conn.recv()
        except EOFError:
            raise RuntimeError("the seed's producer process died") from None
        kind, *rest = message
        if kind == "block":
            return rest[0], rest[1], rest[2]
        if kind == "done":
            self.spilled = rest[0]
            return None
        raise RuntimeError(f"the seed's producer failed:\n{rest[0]}")

    def close(self) -> None:
        self._conn.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _run(conn: Connection, job: Job) -> None:
    try:
        rollups = new_rollups() if job.rollups else None
        sink = RollupSink(rollups, binary=True, directory=job.directory) if rollups else None
        generated = blocks(
            job.n, now=job.now, days=job.days, prices=job.prices, seed=job.seed, chunk=job.chunk
        )
        for block in generated:
            conn.send(("block", block.n, task_rows(block), event_rows(block)))
            if rollups is not None and sink is not None:
                sink.encode(rollups.add(figures(block)))
        spilled: list[Any] = []
        if rollups is not None and sink is not None:
            sink.encode(rollups.finish())
            spilled = sink.spilled()
        conn.send(("done", spilled))
    except BrokenPipeError:
        return  # the loader stopped
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
