"""`/api/analytics`: summary, cost histogram and performance over a window of `created_at`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.api.deps import (
    CtxDep,
    FailureReasonFilter,
    MultiFilter,
    UserRole,
    split_multi,
)
from dashboard_api.context import AppContext
from dashboard_api.errors import Unprocessable
from dashboard_api.observability.setup import metrics_of
from dashboard_api.schemas.analytics import CostHistogram, Performance, Period, Summary
from dashboard_api.schemas.common import problem_responses
from dashboard_api.services.analytics import performance as performance_service
from dashboard_api.services.analytics import reads
from dashboard_api.services.analytics.fold import fold_before_read
from dashboard_api.services.analytics.window import AnalyticsFilters
from dashboard_api.task_statuses import FAILURE_REASONS
from dashboard_api.timeutil import TIME_ZONES, UtcDateTime

_KNOWN_TIME_ZONES = frozenset(TIME_ZONES)

router = APIRouter(
    prefix="/api/analytics", tags=["analytics"], responses=problem_responses(401, 403, 422)
)

DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    filters: AnalyticsFilters


async def window_query(  # async: a plain def would run in the thread pool (a hop per request)
    ctx: CtxDep,
    from_: Annotated[
        UtcDateTime | None,
        Query(
            alias="from",
            description=(
                "Start (inclusive) of created_at; default: to - 30 days. Must be before `to` "
                "(and without it, `to` must leave room for the default window): else 422."
            ),
        ),
    ] = None,
    to: Annotated[
        UtcDateTime | None,
        Query(description="End (exclusive) of created_at; default: now. After `from`."),
    ] = None,
    agent_type: MultiFilter = None,
    source: MultiFilter = None,
    failure_reason: FailureReasonFilter = None,
) -> Window:
    end = to if to is not None else ctx.clock.now()
    try:
        start = from_ if from_ is not None else end - DEFAULT_WINDOW
    except OverflowError:
        raise Unprocessable(
            "`to` is too early for the default window.", loc=["query", "to"]
        ) from None
    if start >= end:
        raise Unprocessable("`from` must be before `to`.", loc=["query", "from"])
    filters = AnalyticsFilters(
        agent_type=split_multi(agent_type, name="agent_type"),
        source=split_multi(source, name="source"),
        failure_reason=split_multi(failure_reason, name="failure_reason", allowed=FAILURE_REASONS),
    )
    return Window(start, end, filters)


WindowDep = Annotated[Window, Depends(window_query)]


@contextlib.asynccontextmanager
async def folded_read(ctx: AppContext) -> AsyncIterator[AsyncSession]:
    """A read session over rollups that hold every write acknowledged before the request.

    Its statements run in autocommit on PostgreSQL: each sees every commit before it, as
    they did in a READ COMMITTED transaction, so what the fold guarantees (every write
    acknowledged before the request) holds for each of them."""
    async with ctx.db.read_statements() as session:
        metrics_of(ctx).count_folded(await fold_before_read(ctx.db, session))
        yield session


def _json(model: BaseModel) -> Response:
    """The model as the response body, serialized once by pydantic-core: FastAPI would
    validate the returned model against `response_model` again first."""
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


class _WindowFigures(Protocol):
    async def __call__(
        self,
        session: AsyncSession,
        *,
        start: datetime,
        end: datetime,
        filters: AnalyticsFilters,
        now: datetime,
    ) -> BaseModel: ...


async def _figures(ctx: AppContext, window: Window, compute: _WindowFigures) -> Response:
    """What `compute` makes of the window, from folded rollups, as the response."""
    async with folded_read(ctx) as session:
        answer = await compute(
            session, start=window.start, end=window.end, filters=window.filters, now=ctx.clock.now()
        )
    return _json(answer)


@router.get("/summary", response_model=Summary)
async def summary(ctx: CtxDep, _: UserRole, window: WindowDep) -> Response:
    """Totals of the tasks created in the window."""
    return await _figures(ctx, window, reads.summary)


@router.get("/costs/histogram", response_model=CostHistogram)
async def cost_histogram(
    ctx: CtxDep,
    _: UserRole,
    window: WindowDep,
    period: Annotated[
        Period,
        Query(
            description=(
                "Bucket length. The window may hold at most DASHBOARD_ANALYTICS_MAX_BUCKETS "
                "(default 2000) buckets of it, and its buckets must stay within years "
                "1-9999 in `tz`: else 422."
            )
        ),
    ] = "day",
    tz: Annotated[
        str,
        Query(
            max_length=64,
            description="IANA time zone",
            json_schema_extra={"enum": TIME_ZONES},
        ),
    ] = "UTC",
) -> Response:
    """Tasks, outcomes, cost and tokens per local hour or day; empty buckets included."""
    if tz not in _KNOWN_TIME_ZONES:
        raise Unprocessable(f"Unknown time zone {tz!r}.", loc=["query", "tz"])
    async with folded_read(ctx) as session:
        answer = await reads.histogram(
            session,
            start=window.start,
            end=window.end,
            period=period,
            tz_name=tz,
            filters=window.filters,
            max_buckets=ctx.settings.analytics_max_buckets,
            now=ctx.clock.now(),
        )
    return Response(answer.json(), media_type="application/json")


@router.get("/performance", response_model=Performance)
async def performance(ctx: CtxDep, _: UserRole, window: WindowDep) -> Response:
    """Outcomes, durations with p50/p95, and cost: overall, per agent type, source and model."""
    return await _figures(ctx, window, performance_service.performance)
