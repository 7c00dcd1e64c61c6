"""Exact spend of a budget's scope over a period, in one statement.

Scopes of agent type and source (or none) read the analytics rollups: a period's edges
are local midnights, which fall on 15-minute block edges in every zone in use, so the
period is a few dozen whole blocks (`decompose`), plus the contributions of task writes
not folded into the rollups yet (`analytics_pending`). Both are read by one statement,
so that a fold committing in between cannot count a contribution twice or not at all:
in one snapshot, rollups plus pending rows equal the tasks exactly.

The rollups carry no user or flow, and adding them would multiply the rollup rows every
task write keeps by the number of users and flows. A scope with `user_id` or `flow_id`
therefore sums `cost_micros` over the range of the `(user_id, created_at)` or
`(flow_id, created_at)` index that the period selects: its cost grows with that user's
or flow's tasks in one period, never with the fleet. A period whose edges are not on
block edges (a zone with a historical odd offset) reads the tasks too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import Dialect, dialect_of
from dashboard_api.db.models import Task
from dashboard_api.db.models.analytics import AnalyticsPending, AnalyticsRollup
from dashboard_api.services.analytics.layout import (
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    epoch_seconds,
)
from dashboard_api.services.analytics.window import split_window

_R = AnalyticsRollup.__table__.c
_P = AnalyticsPending.__table__.c
_T = Task.__table__.c


@dataclass(frozen=True, slots=True)
class Scope:
    """Which tasks a budget counts (None: any)."""

    agent_type: str | None = None
    user_id: str | None = None
    source: str | None = None
    flow_id: str | None = None

    @property
    def in_rollups(self) -> bool:
        return self.user_id is None and self.flow_id is None

    def matches(self, task: Any) -> bool:
        """Whether a task (anything with these attributes) is in scope."""
        return all(
            want is None or getattr(task, name) == want
            for name, want in (
                ("agent_type", self.agent_type),
                ("user_id", self.user_id),
                ("source", self.source),
                ("flow_id", self.flow_id),
            )
        )

    def as_dict(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("agent_type", self.agent_type),
                ("user_id", self.user_id),
                ("source", self.source),
                ("flow_id", self.flow_id),
            )
            if v is not None
        }


def _task_filters(scope: Scope) -> list[ColumnElement[bool]]:
    return [
        getattr(_T, name) == value
        for name, value in (
            ("user_id", scope.user_id),
            ("flow_id", scope.flow_id),
            ("agent_type", scope.agent_type),
            ("source", scope.source),
        )
        if value is not None
    ]


def _from_tasks(scope: Scope, start: datetime, end: datetime) -> Any:
    return select(func.coalesce(func.sum(_T.cost_micros), 0)).where(
        *_task_filters(scope), _T.created_at >= start, _T.created_at < end
    )


def _from_rollups(
    dialect: Dialect, scope: Scope, blocks: list[tuple[int, int]], start: datetime, end: datetime
) -> Any:
    if scope.agent_type is None and scope.source is None:
        series = [_R.series == SERIES_MARGINAL, _R.agent_type == "", _R.source == ""]
    else:
        series = [_R.series == SERIES_ALL_MODELS]
        if scope.agent_type is not None:
            series.append(_R.agent_type == scope.agent_type)
        if scope.source is not None:
            series.append(_R.source == scope.source)
    by_grain: dict[int, list[int]] = {}
    for grain, bucket in blocks:
        by_grain.setdefault(grain, []).append(bucket)
    in_blocks = [
        and_(_R.grain == grain, _R.bucket.in_(buckets)) for grain, buckets in by_grain.items()
    ]
    # The key's leading column with each block (on SQLite, where a series beside an OR of
    # blocks read the whole series: every block of every grain).
    rolled = (
        select(func.coalesce(func.sum(_R.cost_micros), 0))
        .where(dialect.keyed_or([series[0]], in_blocks), *series[1:], _R.model == "")
        .scalar_subquery()
    )
    pending_where = [_P.created_s >= epoch_seconds(start), _P.created_s < epoch_seconds(end)]
    if scope.agent_type is not None:
        pending_where.append(_P.agent_type == scope.agent_type)
    if scope.source is not None:
        pending_where.append(_P.source == scope.source)
    pending = (
        select(func.coalesce(func.sum(_P.sign * _P.cost_micros), 0))
        .where(*pending_where)
        .scalar_subquery()
    )
    return select(rolled + pending)


def spend_statement(dialect: Dialect, scope: Scope, start: datetime, end: datetime) -> Any:
    """A statement whose one value is the exact spend (micro-dollars) of `scope` over the
    tasks created in [start, end)."""
    if scope.in_rollups:
        raw, blocks = split_window(start, end)
        if blocks and not raw:
            return _from_rollups(dialect, scope, blocks, start, end)
    return _from_tasks(scope, start, end)


async def spend_micros(session: AsyncSession, scope: Scope, start: datetime, end: datetime) -> int:
    """The exact spend of `scope` over the tasks created in [start, end)."""
    statement = spend_statement(dialect_of(session), scope, start, end)
    return int(await session.scalar(statement) or 0)
