"""The per-app bundle of resources that routes and background workers share.

The realtime layer and the Redis ingress are opened in the lifespan and seen here through
small Protocols: what routes, health checks and metrics use of them, nothing more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from starlette.websockets import WebSocket

from dashboard_api.auth import Principal, TokenCache
from dashboard_api.db.engine import Database
from dashboard_api.observability.metrics import Metrics
from dashboard_api.security.ratelimit import RateLimiter
from dashboard_api.services.pricing import PriceTable
from dashboard_api.settings import Settings
from dashboard_api.timeutil import Clock


class BrokerView(Protocol):
    """The event broker (Redis or in-process), as health checks and metrics see it."""

    @property
    def backend(self) -> Literal["memory", "redis"]: ...

    @property
    def healthy(self) -> bool: ...

    async def ping(self, timeout: float) -> float: ...


class HubView(Protocol):
    """This replica's fan-out hub, as status and metrics see it."""

    @property
    def connections(self) -> set[object]: ...

    @property
    def connection_count(self) -> int: ...

    @property
    def subscription_count(self) -> int: ...


class LiveDelivery(Protocol):
    """What the `/ws` and SSE routes hand over to the realtime layer."""

    def serve_websocket(self, websocket: WebSocket, principal: Principal) -> Awaitable[None]: ...

    async def task_stream(self, task_id: str, since_seq: int) -> AsyncIterator[bytes] | None: ...


class IngressView(Protocol):
    """The Redis ingress consumer of this replica (docs/api.md §11), as metrics and tests see it."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def eligible(self) -> bool: ...


class JobsView(Protocol):
    """The periodic-job runner of this replica (jobs/), as metrics and tests see it."""

    @property
    def stats(self) -> Mapping[str, Any]: ...


@dataclass
class AppContext:
    """Everything one app instance owns; built in `create_app`, opened in its lifespan."""

    settings: Settings
    db: Database
    clock: Clock
    prices: PriceTable
    tokens: TokenCache
    started_at: datetime
    # Set in the lifespan (app.py): the broker (Redis or in-process), the hub (sockets),
    # the realtime layer that serves /ws and SSE, and with Redis the producer ingress.
    broker: BrokerView | None = None
    hub: HubView | None = None
    realtime: LiveDelivery | None = None
    ingress: IngressView | None = None
    jobs: JobsView | None = None  # the periodic jobs (background.py)
    limiter: RateLimiter | None = None
    metrics: Metrics | None = None  # installed by observability/setup.py
