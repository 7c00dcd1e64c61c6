"""analytics: the tasks with a failure reason get rollup series of their own

Revision ID: 0017_failure_rollups
Revises: 0016_leases
Create Date: 2026-12-07 16:50:00.000000

Analytics take a `failure_reason` filter (docs/api.md §5), answered from the rollups: a
task with a failure reason counts once more in that reason's series, per (agent_type,
source, model) for counters and histograms, and overall per block for counters
(services/analytics/layout.py: series 4 and 6 `lease_expired`, 5 and 7 `agent`).
`analytics_pending` records each contribution's reason.

The new rows are computed here from the tasks that have a reason (the failed ones), in
Python, grain by grain as the service spreads them, and inserted; the other series are
unchanged, so no rebuild is needed. Pending rows already waiting get the reason '' and
fold into the series they always did: the tasks they belong to are counted in their
reason's series here, from the task as it is now, which is what those rows lead to.
A replica still on the previous release writes pending rows without a reason: run
`dashboard-api rollups rebuild` once every replica runs this one.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

import dashboard_api.db.base

revision: str = "0017_failure_rollups"
down_revision: str | Sequence[str] | None = "0016_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The rollups' layout as this revision writes it (services/analytics/layout.py).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = 86400
_GRAINS = (900, 3600, 4 * 3600, _DAY, 4 * _DAY, 16 * _DAY, 64 * _DAY, 256 * _DAY)
_HIST_GRAINS = _GRAINS[2:]
_FAILURE_SERIES = {"lease_expired": 4, "agent": 5}
_FAILURE_MARGINAL_SERIES = {"lease_expired": 6, "agent": 7}
_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
_SUMMED = ("cost_micros", "input_tokens", "output_tokens", "cache_read_tokens")
_COUNTERS = (
    "tasks",
    *_STATUSES,
    *_SUMMED,
    "cache_write_tokens",
    "duration_sum_us",
    "duration_count",
    "changes",
)
_KEY = ("series", "grain", "bucket", "agent_type", "source", "model")
_BATCH = 5000


def _thresholds() -> tuple[int, ...]:
    out = [1]
    while True:
        nxt = max(out[-1] + 1, out[-1] * 104 // 100)
        if nxt > 2**63 - 1:
            return tuple(out)
        out.append(nxt)


def _ts() -> sa.types.TypeEngine[datetime]:
    return dashboard_api.db.base.UTCDateTime(timezone=True)


_TASKS = sa.table(
    "tasks",
    sa.column("task_id", sa.String()),
    sa.column("created_at", _ts()),
    sa.column("agent_type", sa.String()),
    sa.column("source", sa.String()),
    sa.column("model", sa.String()),
    sa.column("failure_reason", sa.String()),
    sa.column("status", sa.String()),
    *(sa.column(name, sa.BigInteger()) for name in (*_SUMMED, "cache_write_tokens")),
    sa.column("duration_us", sa.BigInteger()),
    sa.column("started_at", _ts()),
    sa.column("first_output_at", _ts()),
)
_ROLLUPS = sa.table(
    "analytics_rollups",
    sa.column("series", sa.SmallInteger()),
    sa.column("grain", sa.Integer()),
    sa.column("bucket", sa.BigInteger()),
    *(sa.column(name, sa.String()) for name in ("agent_type", "source", "model")),
    *(sa.column(name, sa.BigInteger()) for name in _COUNTERS),
)
_HIST = sa.table(
    "analytics_histograms",
    sa.column("series", sa.SmallInteger()),
    sa.column("grain", sa.Integer()),
    sa.column("bucket", sa.BigInteger()),
    *(sa.column(name, sa.String()) for name in ("agent_type", "source", "model")),
    sa.column("kind", sa.SmallInteger()),
    sa.column("bin_lo", sa.Integer()),
    sa.column("counts", sa.LargeBinary()),
)


def _reasoned_tasks(bind: sa.Connection) -> Iterator[Any]:
    """The tasks that have a reason, a page at a time by task_id (read to the end before
    anything is written). Plain queries, not a server-side cursor: a cursor left open on
    tasks makes any later DDL on the table in the same transaction (the next migrations)
    fail on PostgreSQL."""
    after = ""
    while True:
        page = bind.execute(
            sa.select(_TASKS)
            .where(_TASKS.c.failure_reason.in_(list(_FAILURE_SERIES)), _TASKS.c.task_id > after)
            .order_by(_TASKS.c.task_id)
            .limit(_BATCH)
        ).all()
        yield from page
        if len(page) < _BATCH:
            return
        after = page[-1].task_id


def _counters(task: Any) -> list[int]:
    out = [1, *(int(task.status == s) for s in _STATUSES)]
    out += [int(getattr(task, name) or 0) for name in (*_SUMMED, "cache_write_tokens")]
    has_duration = task.duration_us is not None
    out += [task.duration_us or 0, int(has_duration), 1]
    return out


def _points(task: Any, thresholds: Sequence[int]) -> list[tuple[int, int]]:
    out = []
    if task.duration_us is not None:
        out.append((0, bisect_right(thresholds, max(0, task.duration_us))))
    if task.first_output_at is not None and task.started_at is not None:
        first = max(0, (task.first_output_at - task.started_at) // timedelta(microseconds=1))
        out.append((1, bisect_right(thresholds, first)))
    return out


def _pack(bins: dict[int, int]) -> tuple[int, bytes]:
    lo, hi = min(bins), max(bins)
    values = array("q", bytes(8 * (hi - lo + 1)))
    for index, count in bins.items():
        values[index - lo] = count
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return lo, values.tobytes()


def _insert(
    bind: sa.Connection, table: Any, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    for i in range(0, len(rows), _BATCH):
        batch = [dict(zip(names, row, strict=True)) for row in rows[i : i + _BATCH]]
        bind.execute(table.insert(), batch)


def upgrade() -> None:
    with op.batch_alter_table("analytics_pending") as batch:
        batch.add_column(
            sa.Column("failure_reason", sa.String(length=32), nullable=False, server_default="")
        )
    bind = op.get_bind()
    # Idempotent: nothing of these series may exist yet, but a half-applied run left some.
    failure_series = [*_FAILURE_SERIES.values(), *_FAILURE_MARGINAL_SERIES.values()]
    op.execute(_ROLLUPS.delete().where(_ROLLUPS.c.series.in_(failure_series)))
    op.execute(_HIST.delete().where(_HIST.c.series.in_(failure_series)))
    thresholds = _thresholds()
    counters: dict[tuple[Any, ...], list[int]] = {}
    bins: dict[tuple[Any, ...], dict[int, int]] = {}
    for task in _reasoned_tasks(bind):
        created_s = (task.created_at - _EPOCH) // timedelta(seconds=1)
        reason, model = task.failure_reason, task.model or ""
        values = _counters(task)
        for grain in _GRAINS:
            bucket = created_s - created_s % grain
            for key in (
                (_FAILURE_SERIES[reason], grain, bucket, task.agent_type, task.source, model),
                (_FAILURE_MARGINAL_SERIES[reason], grain, bucket, "", "", ""),
            ):
                acc = counters.setdefault(key, [0] * len(_COUNTERS))
                for i, v in enumerate(values):
                    acc[i] += v
        for kind, index in _points(task, thresholds):
            for grain in _HIST_GRAINS:
                bucket = created_s - created_s % grain
                key = (_FAILURE_SERIES[reason], grain, bucket, task.agent_type, task.source, model)
                per_bin = bins.setdefault((*key, kind), {})
                per_bin[index] = per_bin.get(index, 0) + 1
    _insert(bind, _ROLLUPS, (*_KEY, *_COUNTERS), [(*k, *v) for k, v in sorted(counters.items())])
    hist_rows = [(*k, *_pack(b)) for k, b in sorted(bins.items())]
    _insert(bind, _HIST, (*_KEY, "kind", "bin_lo", "counts"), hist_rows)
    if bind.dialect.name == "postgresql":
        op.execute("ANALYZE analytics_rollups")
        op.execute("ANALYZE analytics_histograms")


def downgrade() -> None:
    failure_series = [*_FAILURE_SERIES.values(), *_FAILURE_MARGINAL_SERIES.values()]
    op.execute(_ROLLUPS.delete().where(_ROLLUPS.c.series.in_(failure_series)))
    op.execute(_HIST.delete().where(_HIST.c.series.in_(failure_series)))
    with op.batch_alter_table("analytics_pending") as batch:
        batch.drop_column("failure_reason")
