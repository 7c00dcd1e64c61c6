"""The filters and orders of task lists (`GET /api/tasks`), shared by listing and counting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, func, literal_column
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Task
from dashboard_api.db.paging import Ordering

# The table's columns, not the mapped attributes: statements built from them skip the
# ORM's execution steps (list and count queries return plain rows anyway).
TASKS = Task.__table__
_T = TASKS
# Literal (not bound) constants, so that PostgreSQL matches the expression indexes.
_MAX_I64: ColumnElement[int] = literal_column("9223372036854775807", BigInteger)
_MINUS_ONE: ColumnElement[int] = literal_column("-1", BigInteger)
ORDERINGS: dict[str, Ordering] = {
    "created_at": Ordering("created_at", (_T.c.created_at, _T.c.task_id), descending=False),
    "-created_at": Ordering("-created_at", (_T.c.created_at, _T.c.task_id), descending=True),
    "cost_usd": Ordering("cost_usd", (_T.c.cost_micros, _T.c.task_id), descending=False),
    "-cost_usd": Ordering("-cost_usd", (_T.c.cost_micros, _T.c.task_id), descending=True),
    # Missing durations sort last both ways: the key maps NULL past the end of the order.
    "duration_seconds": Ordering(
        "duration_seconds", (func.coalesce(_T.c.duration_us, _MAX_I64), _T.c.task_id), False
    ),
    "-duration_seconds": Ordering(
        "-duration_seconds", (func.coalesce(_T.c.duration_us, _MINUS_ONE), _T.c.task_id), True
    ),
}


@dataclass(frozen=True, slots=True)
class TaskFilters:
    """The filters of `GET /api/tasks`, already validated."""

    status: Sequence[str] = ()
    agent_type: Sequence[str] = ()
    source: Sequence[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    conversation_id: str | None = None
    flow_id: str | None = None
    user_id: str | None = None
    q: str | None = None
    failure_reason: Sequence[str] = ()

    @property
    def beyond_rollups(self) -> bool:
        """Whether a filter the analytics rollups cannot count is set (ids, failure
        reason): such lists are counted on their own indexes."""
        ids = (self.conversation_id, self.flow_id, self.user_id)
        return any(v is not None for v in ids) or bool(self.failure_reason)

    def clauses(self, session: AsyncSession, *, indexed: bool = True) -> list[ColumnElement[bool]]:
        """The WHERE clauses; not `indexed`: `q` cannot use its trigram index (for rows
        another clause narrows down to a few)."""
        out: list[ColumnElement[bool]] = []
        multi: tuple[tuple[Any, Sequence[str]], ...] = (
            (_T.c.status, self.status),
            (_T.c.agent_type, self.agent_type),
            (_T.c.source, self.source),
            (_T.c.failure_reason, self.failure_reason),
        )
        for column, values in multi:
            if len(values) == 1:
                out.append(column == values[0])
            elif values:
                out.append(column.in_(list(values)))
        if self.created_after is not None:
            out.append(_T.c.created_at >= self.created_after)
        if self.created_before is not None:
            out.append(_T.c.created_at < self.created_before)
        single: tuple[tuple[Any, str | None], ...] = (
            (_T.c.conversation_id, self.conversation_id),
            (_T.c.flow_id, self.flow_id),
            (_T.c.user_id, self.user_id),
        )
        for column, value in single:
            if value is not None:
                out.append(column == value)
        if self.q:
            out.append(dialect_of(session).contains_ci(_T.c.input_message, self.q, indexed=indexed))
        return out
