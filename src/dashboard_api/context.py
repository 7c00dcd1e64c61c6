"""The per-app bundle of resources that routes and background workers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dashboard_api.auth import TokenCache
from dashboard_api.db.engine import Database
from dashboard_api.security.ratelimit import RateLimiter
from dashboard_api.services.pricing import PriceTable
from dashboard_api.settings import Settings
from dashboard_api.timeutil import Clock


@dataclass
class AppContext:
    """Everything one app instance owns; built in `create_app`, opened in its lifespan."""

    settings: Settings
    db: Database
    clock: Clock
    prices: PriceTable
    tokens: TokenCache
    started_at: datetime
    # Filled by the realtime layer in the lifespan (broker: Redis or in-process; hub: sockets).
    broker: Any = None
    hub: Any = None
    limiter: RateLimiter | None = None
    extras: dict[str, Any] = field(default_factory=dict)
