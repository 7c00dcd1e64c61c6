"""bench.analytics' baseline on SQLite: the same figures as its PostgreSQL GROUP BYs
(summary, histogram in a time zone, performance with percentiles), from the raw tasks
table of the window read by one statement and grouped here (SQLite has no time zones and
no percentile_disc). Rows index like the PostgreSQL ones (and by name where `verify` does).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

_COLUMNS = (
    "created_at, status, cost_micros, input_tokens, output_tokens, duration_us, "
    "agent_type, source FROM tasks WHERE created_at >= $1 AND created_at < $2"
)


class Row(tuple[Any, ...]):
    """A result row readable by position, and by name for the grouping keys."""

    def __getitem__(self, key: Any) -> Any:
        if key == "agent_type":
            return super().__getitem__(0)
        if key == "source":
            return super().__getitem__(1)
        return super().__getitem__(key)


def _sum(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _percentile_disc(ordered: Sequence[int], p: float) -> int | None:
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)] if ordered else None


async def run_baseline_sqlite(conn: Any, spec: Any) -> Any:
    kind, window, *rest = spec
    lo = datetime.fromisoformat(window["from"].replace("Z", "+00:00"))
    hi = datetime.fromisoformat(window["to"].replace("Z", "+00:00"))
    by_reason = rest[0]["failure_reason"] if rest and isinstance(rest[0], dict) else None
    sql, args = "SELECT " + _COLUMNS, [lo, hi]
    if by_reason:
        sql, args = sql + " AND failure_reason = $3", [*args, by_reason]
    elif kind == "performance" and rest:
        sql, args = sql + " AND agent_type = $3", [*args, rest[0]]
    rows = await conn.fetch(sql, *args)
    if kind == "summary":
        durations = [r[5] for r in rows if r[5] is not None]
        statuses = [r[1] for r in rows]
        return (
            len(rows),
            *(statuses.count(s) for s in ("queued", "running", "completed", "failed", "cancelled")),
            sum(r[2] or 0 for r in rows),
            sum(r[3] or 0 for r in rows),
            sum(r[4] or 0 for r in rows),
            sum(durations) / len(durations) if durations else None,
        )
    if kind == "histogram":
        period, tz = rest
        zone = ZoneInfo(tz)
        buckets: dict[datetime, list[Any]] = defaultdict(list)
        for r in rows:
            local = r[0].astimezone(zone)
            start = local.replace(minute=0, second=0, microsecond=0)
            if period == "day":
                start = start.replace(hour=0)
            buckets[start].append(r)
        return [
            (
                b,
                len(rs),
                sum(r[1] == "completed" for r in rs),
                sum(r[1] == "failed" for r in rs),
                _sum([r[2] for r in rs]),
                _sum([r[3] for r in rs]),
                _sum([r[4] for r in rs]),
            )
            for b, rs in sorted(buckets.items())
        ]
    groups: dict[tuple[str | None, str | None], list[Any]] = defaultdict(list)
    for r in rows:
        groups[(None, None)].append(r)
        groups[(r[6], None)].append(r)
        groups[(None, r[7])].append(r)
    out = []
    for (agent, source), rs in groups.items():
        durations = sorted(r[5] for r in rs if r[5] is not None)
        out.append(
            Row(
                (
                    agent,
                    source,
                    len(rs),
                    sum(r[1] == "completed" for r in rs),
                    sum(r[1] == "failed" for r in rs),
                    sum(durations) / len(durations) if durations else None,
                    _percentile_disc(durations, 0.5),
                    _percentile_disc(durations, 0.95),
                    _sum([r[2] for r in rs]),
                    _sum([r[3] for r in rs]),
                    _sum([r[4] for r in rs]),
                )
            )
        )
    return out
