"""The FastAPI application: the context, routers, middleware and lifespan, assembled."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard_api import __version__
from dashboard_api.api import (
    agents,
    alerts,
    analytics,
    budgets,
    conversations,
    health,
    oauth,
    session,
    sources,
    stream,
    system,
    tasks,
    webhooks,
)
from dashboard_api.api.openapi import API_DESCRIPTION
from dashboard_api.api.openapi import install as install_openapi
from dashboard_api.api.problems import install_error_handlers, problem_response
from dashboard_api.api.task_history import ServiceTaskHistory
from dashboard_api.api.ws import WebSocketEntry
from dashboard_api.auth import TokenCache
from dashboard_api.background import background_lifespan
from dashboard_api.context import AppContext
from dashboard_api.db.engine import Database
from dashboard_api.errors import PayloadTooLarge
from dashboard_api.gc_tuning import freeze_after_start
from dashboard_api.ingress import ingress_lifespan
from dashboard_api.observability.middleware import ObservabilityMiddleware
from dashboard_api.observability.setup import install_observability, metrics_of
from dashboard_api.otlp import router as otlp
from dashboard_api.realtime import Realtime, realtime_lifespan
from dashboard_api.realtime.channels import ChannelAuthorizer
from dashboard_api.security.headers import SecurityHeadersMiddleware
from dashboard_api.security.ratelimit import MemoryRateLimiter, RedisRateLimiter
from dashboard_api.services import conversations as conversations_service
from dashboard_api.services import retention
from dashboard_api.services.analytics import rollups
from dashboard_api.services.budgets import service as budgets_service
from dashboard_api.services.leases import LEASE_SECONDS_KEY
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import TaskHook, with_task_hooks
from dashboard_api.services.tasks import search_hours
from dashboard_api.settings import Settings
from dashboard_api.timeutil import Clock, SystemClock
from dashboard_api.web import install_dashboard

log = logging.getLogger("dashboard_api")


class BodyLimitMiddleware:
    """Refuse request bodies over the limit with 413 before they are buffered whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    response = problem_response(
                        413,
                        "Content Too Large",
                        f"The request body is over {self.max_bytes} bytes.",
                    )
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"The request body is over {self.max_bytes} bytes.")
            return message

        await self.app(scope, limited, send)


WEBSOCKET_PATH = "/ws"


class DashboardApp(FastAPI):
    """The app, with `/ws` sockets handed straight to their endpoint.

    A socket's ASGI call lasts as long as the socket, and with it every frame and object
    of the stack that leads to its handler. Through Starlette's middleware stack and
    router that was ~13 KB per socket (route matching, exit stacks, exception and body
    limit wrappers), over a third of an idle connection's memory. The middleware of this
    app passes WebSocket scopes through unchanged except the observability middleware
    (request id, access log, session metrics), so `/ws` gets that one and its endpoint;
    `tests/realtime/test_ws_protocol.py` holds the handshake, its checks and its answers.
    """

    ws_entry: ASGIApp | None = None
    ws_route: BaseRoute | None = None  # what the access log names (`/ws`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self.ws_entry
        if (
            entry is not None
            and scope["type"] == "websocket"
            and get_route_path(scope) == WEBSOCKET_PATH
        ):
            scope["app"] = self
            scope["route"] = self.ws_route
            await entry(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _install_websocket_entry(app: DashboardApp, ctx: AppContext) -> None:
    entry = WebSocketEntry(ctx)
    app.ws_route = WebSocketRoute(WEBSOCKET_PATH, entry, name="websocket")
    app.ws_entry = ObservabilityMiddleware(entry, metrics=metrics_of(ctx))


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """Build an app; nothing is opened until its lifespan starts."""
    ctx = build_context(settings or Settings(), clock or SystemClock())
    app = DashboardApp(
        title="Dashboard API",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=_lifespan(ctx),
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    _install_middleware(app, ctx)
    for router in _ROUTERS:
        app.include_router(router)
    _install_websocket_entry(app, ctx)
    # hardening: document the cross-cutting problem answers (400/401/403/413/422/429/503)
    install_openapi(app, metrics_need_token=ctx.settings.metrics_require_token)
    # web: the dashboard's files, and its page for any other GET outside the API (last)
    install_dashboard(app)
    return app


def build_context(settings: Settings, clock: Clock) -> AppContext:
    """The app's resources, none of them opened yet."""
    models, default = settings.price_table()
    db = Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        cache_mb=settings.sqlite_cache_mb,
        mmap_mb=settings.sqlite_mmap_mb,
    )
    # What every task write does besides, in this order (services/task_hooks.py). Lock
    # order on PostgreSQL is task rows -> conversation row in every transaction (posting
    # a message locks its conversation before it creates the task), so conversations run
    # first; analytics only appends a row (no shared row locked).
    # A batch of writes (task_hooks.tasks_written) runs each hook over the whole batch.
    task_hooks: tuple[TaskHook, ...] = (
        # replies, and the conversation's totals (a batch one by one: a write that is no
        # conversation's costs no statement)
        TaskHook(conversations_service.on_task_written),
        # the write's analytics rollup contribution
        TaskHook(rollups.apply_task_write, rollups.apply_task_writes, rollups.new_task_rows),
        # After analytics: the spend it reads includes this write's own contribution.
        # Holds a `hold` budget that reached its limit.
        TaskHook(budgets_service.on_task_written, budgets_service.on_tasks_written),
        # A task inserted with an old creation time lowers retention's `empty_before_s`
        # (a statement only for those; last: it locks the shared state row).
        retention.TASK_HOOK,
    )
    # analytics: read by the rollup hook on every task write (off only in benchmarks)
    # q totals: per-hour match counts this app's requests share (services/tasks/search_hours.py)
    db.configure_sessions(
        with_task_hooks(
            {
                "analytics_rollups_enabled": settings.analytics_rollups_enabled,
                search_hours.CACHE_KEY: search_hours.QCountCache(),
                # the lease a task entering running takes (services/leases.py)
                LEASE_SECONDS_KEY: settings.task_lease_seconds,
            },
            task_hooks,
        )
    )
    ctx = AppContext(
        settings=settings,
        db=db,
        clock=clock,
        prices=PriceTable(models, default),
        tokens=TokenCache(settings.token_cache_seconds),
        started_at=clock.now(),
    )
    limit = settings.effective_rate_limit
    if limit > 0:
        ctx.limiter = (
            RedisRateLimiter(settings.redis_url, settings.redis_prefix, limit)
            if settings.redis_url
            else MemoryRateLimiter(limit)
        )
    return ctx


def _lifespan(ctx: AppContext) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(ctx.db.dispose)
            if ctx.limiter is not None:
                stack.push_async_callback(ctx.limiter.close)
            # realtime: broker + hub, and the database's publisher of committed events
            rt = _realtime(ctx)
            await stack.enter_async_context(realtime_lifespan(rt, ctx.db))
            # with Redis: the producer channels of docs/api.md §11 (stops before the realtime)
            await stack.enter_async_context(ingress_lifespan(ctx))
            # agents sweeper, published-event count, demo data and simulated agents
            await stack.enter_async_context(background_lifespan(ctx))
            freeze_after_start()  # short full GC pauses (see gc_tuning)
            yield

    return lifespan


def _realtime(ctx: AppContext) -> Realtime:
    """The realtime layer, with what it needs of the features handed in: the task history
    it resumes from, and who owns a conversation channel."""
    owners = {"conversation": functools.partial(conversations.lookup_conversation_owner, ctx)}
    rt = Realtime(ctx.settings, ServiceTaskHistory(ctx.db), ChannelAuthorizer(owners))
    ctx.broker = rt.broker
    ctx.hub = rt.hub
    ctx.realtime = rt
    return rt


def _install_middleware(app: FastAPI, ctx: AppContext) -> None:
    settings = ctx.settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    # Outermost: request ids, access logs and request metrics see every response.
    install_observability(app, ctx)


_ROUTERS = (
    health.router,
    tasks.router,
    agents.router,
    system.router,
    session.router,
    conversations.router,
    webhooks.router,
    oauth.router,
    sources.router,
    analytics.router,
    budgets.router,
    alerts.router,
    stream.router,  # realtime: /ws and /api/tasks/{task_id}/stream
    otlp.router,  # POST /v1/traces: OpenTelemetry GenAI spans -> tasks
)
