"""Redis ingress (docs/api.md §11): agents publish to `task:{id}:output` and `task:{id}:status`.

Pub/Sub delivers every message to every replica, so exactly one replica per Redis stores
them: the leader, elected with `SET key token NX PX ttl` and renewed every ttl/3 by a
compare-and-extend script. A leader stops handling messages as soon as it cannot prove
its lease is still valid, so two replicas never store the same message at once.

Every replica listens, not only the leader: the others hold what they receive for a few
lease periods. A replica that becomes leader first stores what it holds, then goes on
live, so that messages published while the previous leader was dying are not lost. To
tell which held messages the previous leader had already stored, a message may carry a
`message_id` (unique per task): its id is recorded in the same transaction as the change
it carries, and a message whose id is recorded is skipped — exactly once, whichever
replica stores it and whenever one dies. Held messages without an id are dropped (the
new leader cannot know whether they were stored): without `message_id` a message is
stored at most once around a leader change, exactly once otherwise.

What a replica holds covers a leader's death only once it has listened for the whole
hold window: a replica that started a moment ago lacks what was published before. So
only a replica that has listened that long (eligible) runs for leader at once. One that
has not waits until it has seen the leader's key vacant for `takeover_wait` (one lease
period, several election rounds of any eligible replica) and only then runs too, so that
a cluster restarted all at once still gets a leader in bounded time.

`PUBLISH` answers how many subscribers received a message; every replica subscribes, so 0
means that no replica took it and the producer should publish it again (same id).

`DASHBOARD_REDIS_INGRESS_PREFIX` (default empty, as docs/api.md has it) puts a prefix before
those channel names, so that several deployments can share one Redis server without
storing each other's producer messages.

How a message is stored is `ingress/messages.py`: through the same service functions as
the HTTP producer endpoints, so its events fan out the same way. A malformed message is
logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from dashboard_api.aiotasks import raise_if_cancelled, stop_tasks
from dashboard_api.context import AppContext
from dashboard_api.errors import ProblemError
from dashboard_api.ingress.messages import (
    ingress_patterns,
    parse_ingress_channel,
    prune_message_ids,
    store_message,
)
from dashboard_api.settings import Settings

log = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 600.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Ingress:
    """Leader-elected consumer of the producer channels of one Redis."""

    def __init__(
        self,
        ctx: AppContext,
        settings: Settings,
        *,
        lease_ms: int = 3000,
        hold_seconds: float | None = None,
        takeover_wait: float | None = None,
    ) -> None:
        assert settings.redis_url
        self.ctx = ctx
        self.settings = settings
        self.lease_ms = lease_ms
        # Long enough to cover a leader's death: its lease running out plus one election.
        self.hold_seconds = hold_seconds if hold_seconds is not None else 3 * lease_ms / 1000
        # How long a replica that is not eligible yet waits for an eligible one to lead.
        self.takeover_wait = takeover_wait if takeover_wait is not None else lease_ms / 1000
        self._listening_since: float | None = None  # monotonic; None while not listening
        self._vacant_since: float | None = None  # when the leader's key was first seen unset
        self.key = f"{settings.redis_prefix}ingress:leader"
        self.token = uuid.uuid4().hex
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0
        )
        self._sub_client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0
        )
        self._deadline = 0.0  # monotonic time until which our lease is surely valid
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._held: deque[tuple[float, str, bytes]] = deque()
        self._held_limit = 100_000
        self._next_prune = 0.0
        self.stored = 0
        self.skipped = 0
        self.duplicates = 0  # messages whose id was already stored
        self.dropped_without_id = 0  # held messages a new leader could not vouch for
        self.listening = asyncio.Event()  # subscribed to the producer channels
        self.leader_event = asyncio.Event()  # leading and subscribed

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._deadline

    @property
    def eligible(self) -> bool:
        """Listened for the whole hold window: what it holds covers a leader's death."""
        since = self._listening_since
        return since is not None and time.monotonic() - since >= self.hold_seconds

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-ingress")
        self._task = asyncio.create_task(self._elect(), name="redis-ingress-election")

    async def close(self) -> None:
        self._closing = True
        try:
            await stop_tasks((self._task, self._listener), what="redis ingress")
            if self._deadline > time.monotonic():
                with contextlib.suppress(Exception):
                    await self.client.eval(_RELEASE, 1, self.key, self.token)
        finally:
            # Also when cancelled: the connections must not outlive the loop.
            self._deadline = 0.0
            await self.client.aclose()
            await self._sub_client.aclose()

    # --- election -----------------------------------------------------------------------

    async def _elect(self) -> None:
        renew_every = self.lease_ms / 3000
        while not self._closing:
            raise_if_cancelled()
            started = time.monotonic()
            try:
                if not self.listening.is_set():
                    # Leading without listening would leave messages to nobody.
                    self._step_down()
                    self._vacant_since = None
                elif self.is_leader:
                    ok = await self.client.eval(_RENEW, 1, self.key, self.token, self.lease_ms)
                    if ok:
                        self._deadline = started + self.lease_ms * 0.8 / 1000
                    else:
                        self._step_down()
                elif await self._may_run(started):
                    ok = await self.client.set(self.key, self.token, nx=True, px=self.lease_ms)
                    if ok:
                        # The key lives lease_ms from when Redis applied the command, which
                        # is after `started`; keep a margin for clock-rate differences.
                        self._deadline = started + self.lease_ms * 0.8 / 1000
                        log.info("this replica now leads the Redis ingress")
                        self.leader_event.set()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("ingress election: redis unavailable (%s)", exc)
                if not self.is_leader:
                    self._step_down()
            except Exception:
                log.exception("ingress election failed")
            await asyncio.sleep(renew_every * (0.9 + 0.2 * random.random()))

    async def _may_run(self, now: float) -> bool:
        """Whether to try for the lease now: at once when eligible, else only once the
        leader's key has stayed unset for `takeover_wait` (no eligible replica took it)."""
        if self.eligible:
            return True
        if await self.client.exists(self.key):
            self._vacant_since = None
            return False
        if self._vacant_since is None:
            self._vacant_since = now
        return now - self._vacant_since >= self.takeover_wait

    def _step_down(self) -> None:
        if self._deadline:
            log.info("this replica no longer leads the Redis ingress")
        self._deadline = 0.0
        self.leader_event.clear()

    # --- listening ----------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.05
        while not self._closing:
            raise_if_cancelled()
            try:
                await self._listen_once()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("ingress subscription lost: %s", exc)
            except Exception:
                log.exception("ingress listener failed")
            self.listening.clear()
            if self.is_leader:
                # Messages published meanwhile reach the other replicas only: let one of
                # them lead (what it holds covers the time we were away).
                self._step_down()
                with contextlib.suppress(Exception):
                    await self.client.eval(_RELEASE, 1, self.key, self.token)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(5.0, backoff * 2)

    async def _listen_once(self) -> None:
        pubsub = self._sub_client.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.psubscribe(*ingress_patterns(self.settings.redis_ingress_prefix))
            confirmed = 0
            while confirmed < 2:
                msg = await pubsub.get_message(timeout=5.0)
                if msg is None:
                    raise OSError("redis did not confirm the ingress subscription")
                if msg["type"] == "psubscribe":
                    confirmed += 1
            self._listening_since = time.monotonic()
            self.listening.set()
            while not self._closing:
                msg = await pubsub.get_message(timeout=0.2)
                if self.is_leader and self._held:
                    await self._store_held()
                if msg is None or msg["type"] != "pmessage":
                    if not self.is_leader:
                        self._trim_held()
                    continue
                channel, data = _text(msg["channel"]), msg["data"]
                if self.is_leader:
                    await self.handle(channel, data)
                    await self._maybe_prune()
                else:
                    self._held.append((time.monotonic(), channel, data))
                    self._trim_held()
        finally:
            self.listening.clear()
            self._listening_since = None  # what it holds has a hole from now on
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _trim_held(self) -> None:
        held = self._held
        horizon = time.monotonic() - self.hold_seconds
        while held and (held[0][0] < horizon or len(held) > self._held_limit):
            held.popleft()

    async def _store_held(self) -> None:
        """After taking over: store in order what was held, skipping what is known stored."""
        self._trim_held()
        held, self._held = self._held, deque()
        if held:
            log.info("ingress: storing %d messages held while another replica led", len(held))
        while held:
            if not self.is_leader:
                held.extend(self._held)
                self._held = held
                return
            _, channel, data = held.popleft()
            await self.handle(channel, data, held=True)

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_SECONDS
        try:
            await prune_message_ids(self.ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("ingress: pruning stored message ids failed", exc_info=True)

    async def handle(self, channel: str, data: Any, *, held: bool = False) -> bool:
        """Store one producer message; False (logged) when it is malformed, refused or
        already stored. `held`: received while another replica led (stored only with an id).
        """
        target = parse_ingress_channel(channel, self.settings.redis_ingress_prefix)
        if target is None:
            self.skipped += 1
            log.warning("ingress: ignoring a message on %r", channel)
            return False
        task_id, kind = target
        try:
            outcome = await store_message(self.ctx, task_id, kind, data, held=held)
        except asyncio.CancelledError:
            raise
        except (ValidationError, ValueError, ProblemError) as exc:
            self.skipped += 1
            log.warning("ingress: skipping a message on %s: %s", channel, _short(exc))
            return False
        except Exception:
            self.skipped += 1
            log.exception("ingress: could not store a message on %s", channel)
            return False
        if outcome == "duplicate":
            self.duplicates += 1
            return False
        if outcome == "dropped_without_id":
            self.dropped_without_id += 1
            return False
        self.stored += 1
        return True


@contextlib.asynccontextmanager
async def ingress_lifespan(ctx: AppContext) -> AsyncIterator[Ingress | None]:
    """Run this replica's Redis ingress while the app runs (with Redis only)."""
    if not ctx.settings.redis_url:
        yield None
        return
    ingress = Ingress(ctx, ctx.settings, lease_ms=ctx.settings.ingress_lease_ms)
    await ingress.start()
    ctx.ingress = ingress
    try:
        yield ingress
    finally:
        ctx.ingress = None
        await ingress.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short(exc: Exception) -> str:
    text = str(exc).replace("\n", " ")
    return text[:300]
