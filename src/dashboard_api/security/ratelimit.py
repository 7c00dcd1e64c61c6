"""Per-token request rate limits: fixed one-minute windows, shared through Redis when set.

With Redis every replica counts against the same window; without it the count is per
process (the embedded mode runs one process). A Redis outage lets requests through
rather than failing them: the limit protects capacity, it is not an access control.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("dashboard_api.ratelimit")

WINDOW_SECONDS = 60


class RateLimiter(Protocol):
    async def hit(self, key: str) -> float | None:
        """Count one request; None if allowed, else seconds until the window resets."""
        ...

    async def close(self) -> None: ...


class MemoryRateLimiter:
    """Counts in this process."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}

    async def hit(self, key: str) -> float | None:
        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        if window != self._window:
            self._window, self._counts = window, {}
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count > self.limit:
            return (window + 1) * WINDOW_SECONDS - now
        return None

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    """Counts in Redis (INCR + EXPIRE on a key per token and window)."""

    def __init__(
        self, url: str, prefix: str, limit: int, clock: Callable[[], float] = time.time
    ) -> None:
        import redis.asyncio as aioredis

        self.limit = limit
        self.clock = clock
        self.prefix = prefix
        self._redis = aioredis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    async def hit(self, key: str) -> float | None:
        from redis.exceptions import RedisError

        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        name = f"{self.prefix}ratelimit:{key}:{window}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, WINDOW_SECONDS * 2)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("rate limiter unavailable, allowing the request: %s", exc)
            return None
        if int(count) > self.limit:
            return (window + 1) * WINDOW_SECONDS - now
        return None

    async def close(self) -> None:
        await self._redis.aclose()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
