"""`/api/webhooks`: provider deliveries (signature-checked), configs, events, statistics."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from dashboard_api.api.deps import (
    MULTI_DESCRIPTION,
    AdminRole,
    AgentRole,
    CtxDep,
    MultiFilter,
    PageDep,
    UserRole,
    choice_items,
    split_multi,
)
from dashboard_api.db.models.webhooks import WEBHOOK_SOURCES, WEBHOOK_STATUSES
from dashboard_api.errors import Unprocessable
from dashboard_api.schemas.common import Items, Page, problem_responses
from dashboard_api.schemas.webhooks import (
    WebhookConfigPublic,
    WebhookConfigUpdate,
    WebhookEventCreate,
    WebhookEventDetail,
    WebhookEventPublic,
    WebhookReceived,
    WebhookStats,
    event_detail,
    event_public,
)
from dashboard_api.services import webhooks as service
from dashboard_api.services.secrets_box import box_key
from dashboard_api.timeutil import UtcDateTime

router = APIRouter(
    prefix="/api/webhooks", tags=["webhooks"], responses=problem_responses(401, 403, 422)
)
SourcePath = Annotated[str, Path(max_length=64, description="`github`, `jira` or `slack`")]


@router.get("", response_model=Items[WebhookConfigPublic])
async def list_configs(ctx: CtxDep, _: UserRole) -> Items[WebhookConfigPublic]:
    """The three providers' configs with their recent health (secrets never included)."""
    async with ctx.db.read() as session:
        items = await service.list_configs(session, now=ctx.clock.now())
    return Items[WebhookConfigPublic](items=items)


@router.get("/events", response_model=Page[WebhookEventPublic])
async def list_events(
    ctx: CtxDep,
    _: UserRole,
    page: PageDep,
    source: Annotated[
        list[Annotated[str, choice_items(WEBHOOK_SOURCES)]] | None,
        Query(description=MULTI_DESCRIPTION),
    ] = None,
    status: Annotated[
        list[Annotated[str, choice_items(WEBHOOK_STATUSES)]] | None,
        Query(description=MULTI_DESCRIPTION),
    ] = None,
    event_type: MultiFilter = None,
    from_: Annotated[UtcDateTime | None, Query(alias="from", description="received_at >=")] = None,
    to: Annotated[UtcDateTime | None, Query(description="received_at <")] = None,
) -> Page[WebhookEventPublic]:
    """Recorded deliveries, newest first."""
    filters = service.EventFilters(
        source=split_multi(source, name="source", allowed=WEBHOOK_SOURCES),
        status=split_multi(status, name="status", allowed=WEBHOOK_STATUSES),
        event_type=split_multi(event_type, name="event_type"),
        start=from_,
        end=to,
    )
    async with ctx.db.read() as session:
        result = await service.list_events(session, filters=filters, page=page)
    return Page[WebhookEventPublic].of(result)


@router.post(
    "/events",
    status_code=201,
    response_model=WebhookEventPublic,
    responses={200: {"description": "That successful delivery id was already recorded"}},
)
async def record_event(
    ctx: CtxDep, _: AgentRole, body: WebhookEventCreate, response: Response
) -> WebhookEventPublic:
    """Record an event handled elsewhere (agent). A repeated successful delivery id is 200."""
    async with ctx.db.write() as session:
        event, created = await service.record_event(session, body=body, now=ctx.clock.now())
        public = event_public(event)
    if not created:
        response.status_code = 200
    return public


@router.get("/stats", response_model=WebhookStats)
async def stats(
    ctx: CtxDep,
    _: UserRole,
    from_: Annotated[
        UtcDateTime | None,
        Query(
            alias="from",
            description=(
                "Start (inclusive); default: to - 24 h. Not after `to` (and without it, `to` "
                "must leave room for the default window): else 422."
            ),
        ),
    ] = None,
    to: Annotated[UtcDateTime | None, Query(description="End (exclusive); default: now")] = None,
) -> WebhookStats:
    """Per-provider counts over `from <= received_at < to` (default: the last 24 h)."""
    end = to or ctx.clock.now()
    try:
        start = from_ or end - timedelta(days=1)
    except OverflowError:  # hardening: `to` within a day of year 1 leaves no default window
        raise Unprocessable(
            "`to` is too early for the default window; give `from`.", loc=["query", "to"]
        ) from None
    if start > end:
        raise Unprocessable("`from` is after `to`.", loc=["query", "from"])
    async with ctx.db.read() as session:
        sources = await service.stats_by_source(session, start=start, end=end)
    return WebhookStats(from_=start, to=end, sources=sources)


@router.get(
    "/events/{event_id}", response_model=WebhookEventDetail, responses=problem_responses(404)
)
async def get_event(
    ctx: CtxDep, _: UserRole, event_id: Annotated[str, Path(max_length=64)]
) -> WebhookEventDetail:
    """One event with its stored payload."""
    async with ctx.db.read() as session:
        return event_detail(await service.get_event(session, event_id=event_id))


@router.put("/{source}", response_model=WebhookConfigPublic, responses=problem_responses(404))
async def update_config(
    ctx: CtxDep, _: AdminRole, source: SourcePath, body: WebhookConfigUpdate
) -> WebhookConfigPublic:
    """Enable or disable a provider, set or (with `null`) unset its secret."""
    service.require_source(source)
    async with ctx.db.write() as session:
        return await service.update_config(
            session, source=source, body=body, key=box_key(ctx.settings), now=ctx.clock.now()
        )


async def _read_body(request: Request, limit: int) -> tuple[bytes, bool, int]:
    """The raw body, read up to `limit` bytes: (body, complete, size seen or announced)."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        return b"", False, int(announced)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return b"", False, size
        parts.append(chunk)
    return b"".join(parts), True, size


@router.post(
    "/{source}/receive",
    response_model=WebhookReceived,
    responses={
        **problem_responses(400, 401, 403, 404, 413),
        200: {
            "description": "Recorded (or a repeated delivery). Slack's url_verification is "
            'answered `{"challenge": ...}`.'
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "The provider's payload, signed as its headers say (docs/api.md §7).",
        },
        "security": [],
    },
)
async def receive(ctx: CtxDep, source: SourcePath, request: Request) -> Any:
    """Receive a provider's webhook: verify its signature, record it, maybe create a task."""
    service.require_source(source)
    settings = ctx.settings
    body, complete, size = await _read_body(request, settings.webhook_max_body_bytes)
    async with ctx.db.write() as session:
        outcome = await service.receive(
            session,
            source=source,
            headers=request.headers,
            body=body,
            complete=complete,
            size=size,
            now=ctx.clock.now(),
            max_body_bytes=settings.webhook_max_body_bytes,
            slack_tolerance_seconds=settings.slack_timestamp_tolerance_seconds,
            create_tasks=settings.webhook_create_tasks,
            agent_type=settings.default_agent_type,
            key=box_key(settings),
            prices=ctx.prices,
        )
    if outcome.problem is not None:
        raise outcome.problem  # recorded as failed (committed above); now answer it
    if outcome.challenge is not None:
        return JSONResponse({"challenge": outcome.challenge})
    return WebhookReceived(
        event_id=outcome.event.event_id,
        event_type=outcome.event.event_type,
        duplicate=outcome.duplicate,
        task_id=outcome.event.task_id,
    )
