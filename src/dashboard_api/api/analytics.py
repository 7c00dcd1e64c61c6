"""`/api/analytics`: summary, cost histogram and performance over a window of `created_at`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import QueryParams

from dashboard_api.api.deps import (
    USER_ROLE,
    CtxDep,
    FailureReasonFilter,
    MultiFilter,
    UserRole,
    split_multi,
)
from dashboard_api.api.lean import LeanRoute, lean_path, lean_principal
from dashboard_api.context import AppContext
from dashboard_api.errors import Unprocessable
from dashboard_api.observability.setup import metrics_of
from dashboard_api.schemas.analytics import CostHistogram, Performance, Period, Summary
from dashboard_api.schemas.common import problem_responses
from dashboard_api.services.analytics import performance as performance_service
from dashboard_api.services.analytics import reads
from dashboard_api.services.analytics.fold import defer_fold_check, fold_pending
from dashboard_api.services.analytics.window import AnalyticsFilters
from dashboard_api.task_statuses import FAILURE_REASONS
from dashboard_api.timeutil import TIME_ZONES, UtcDateTime

_KNOWN_TIME_ZONES = frozenset(TIME_ZONES)

# LeanRoute: plainly valid requests are read by a lean path first (api/lean.py).
router = APIRouter(
    prefix="/api/analytics",
    tags=["analytics"],
    responses=problem_responses(401, 403, 422),
    route_class=LeanRoute,
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
    start, end = _window_bounds(ctx, from_, to)
    filters = AnalyticsFilters(
        agent_type=split_multi(agent_type, name="agent_type"),
        source=split_multi(source, name="source"),
        failure_reason=split_multi(failure_reason, name="failure_reason", allowed=FAILURE_REASONS),
    )
    return Window(start, end, filters)


def _window_bounds(
    ctx: AppContext, from_: datetime | None, to: datetime | None
) -> tuple[datetime, datetime]:
    end = to if to is not None else ctx.clock.now()
    try:
        start = from_ if from_ is not None else end - DEFAULT_WINDOW
    except OverflowError:
        raise Unprocessable(
            "`to` is too early for the default window.", loc=["query", "to"]
        ) from None
    if start >= end:
        raise Unprocessable("`from` must be before `to`.", loc=["query", "from"])
    return start, end


WindowDep = Annotated[Window, Depends(window_query)]


@contextlib.asynccontextmanager
async def folded_read(ctx: AppContext) -> AsyncIterator[AsyncSession]:
    """A read session over rollups that hold every write acknowledged before the request:
    its first statement checks for pending rows, and folds them first if there are any
    (`execute_folded`).

    Its statements run in autocommit on PostgreSQL: each sees every commit before it, as
    they did in a READ COMMITTED transaction, so what the fold guarantees (every write
    acknowledged before the request) holds for each of them. They run on generic plans
    there (`Database.read_generic`): each analytics statement's generic plan reads the
    buffers its custom plans read, without planning per request."""

    async def fold(upto: int) -> None:
        metrics_of(ctx).count_folded(await fold_pending(ctx.db, wait=True, upto=upto))

    async with ctx.db.read_generic() as session:
        defer_fold_check(session, fold)
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
    return await _histogram(ctx, window, period, tz)


async def _histogram(ctx: AppContext, window: Window, period: Period, tz: str) -> Response:
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


# --- lean paths (api/lean.py) -------------------------------------------------------------
# FastAPI's dependencies (the window's five query parameters, the role) cost more CPU than
# a summary's statement. A request whose parameters are all plainly valid, each given
# once, is read here with the same parsers; anything else (a failure_reason filter, an
# unknown or repeated parameter, a value FastAPI would refuse or 422 on) goes to FastAPI.

_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(UtcDateTime)
_WINDOW_KEYS = frozenset({"from", "to"})
_MULTI_KEYS = frozenset({"agent_type", "source"})
_HISTOGRAM_KEYS = frozenset({"period", "tz"})


def _lean_query(
    ctx: AppContext, params: QueryParams, extra: frozenset[str]
) -> tuple[Window, dict[str, str]] | None:
    """The window of a plainly valid request and its `extra` parameters, or None."""
    single: dict[str, str] = {}
    for key, value in params.multi_items():
        if key in _MULTI_KEYS:
            if "\x00" in value:
                return None
        elif key in single or (key not in _WINDOW_KEYS and key not in extra):
            return None
        else:
            single[key] = value
    try:
        from_ = _TIMESTAMP.validate_python(single["from"]) if "from" in single else None
        to = _TIMESTAMP.validate_python(single["to"]) if "to" in single else None
        start, end = _window_bounds(ctx, from_, to)
    except (ValidationError, Unprocessable):
        return None
    filters = AnalyticsFilters(
        agent_type=split_multi(params.getlist("agent_type"), name="agent_type"),
        source=split_multi(params.getlist("source"), name="source"),
    )
    return Window(start, end, filters), single


async def _window_figures_lean(request: Request, compute: _WindowFigures) -> Response | None:
    """A summary-shaped read (the window and filters alone) without FastAPI's dependencies;
    None hands anything not plainly valid to the declared route."""
    ctx: AppContext = request.app.state.ctx
    query = _lean_query(ctx, request.query_params, frozenset())
    if query is None:
        return None
    await lean_principal(request, USER_ROLE)
    return await _figures(ctx, query[0], compute)


@lean_path(summary)
async def _summary_lean(request: Request) -> Response | None:
    return await _window_figures_lean(request, reads.summary)


@lean_path(performance)
async def _performance_lean(request: Request) -> Response | None:
    return await _window_figures_lean(request, performance_service.performance)


@lean_path(cost_histogram)
async def _cost_histogram_lean(request: Request) -> Response | None:
    ctx: AppContext = request.app.state.ctx
    query = _lean_query(ctx, request.query_params, _HISTOGRAM_KEYS)
    if query is None:
        return None
    window, single = query
    period = single.get("period", "day")
    tz = single.get("tz", "UTC")
    if period not in ("hour", "day") or tz not in _KNOWN_TIME_ZONES:
        return None
    await lean_principal(request, USER_ROLE)
    return await _histogram(ctx, window, "hour" if period == "hour" else "day", tz)
