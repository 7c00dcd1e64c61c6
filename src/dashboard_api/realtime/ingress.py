"""Redis ingress (API.md §11): agents publish to `task:{id}:output` and `task:{id}:status`.

Pub/Sub delivers every message to every replica, so exactly one replica per Redis stores
them: the leader, elected with `SET key token NX PX ttl` and renewed every ttl/3 by a
compare-and-extend script. The others stand by and take over when the lease lapses. A
leader stops handling messages as soon as it cannot prove its lease is still valid, so two
replicas never store the same message. Messages published while no replica leads (a few
seconds after a leader dies) are lost: Pub/Sub keeps nothing.

Each message goes through the same service functions as the HTTP producer endpoints, so
its events fan out the same way. A malformed message is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from dashboard_api.errors import ProblemError
from dashboard_api.ids import TASK_ID_RE
from dashboard_api.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_PATTERN = "task:*:output"
STATUS_PATTERN = "task:*:status"

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


def parse_ingress_channel(channel: str) -> tuple[str, str] | None:
    """`task:{id}:output` → (id, "output"); None for anything else."""
    if not channel.startswith("task:"):
        return None
    task_id, sep, kind = channel[5:].rpartition(":")
    if not sep or kind not in ("output", "status") or TASK_ID_RE.fullmatch(task_id) is None:
        return None
    return task_id, kind


class Ingress:
    """Leader-elected consumer of the producer channels of one Redis."""

    def __init__(self, ctx: Any, settings: Settings, *, lease_ms: int = 3000) -> None:
        assert settings.redis_url
        self.ctx = ctx
        self.settings = settings
        self.lease_ms = lease_ms
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
        self._consumer: asyncio.Task[None] | None = None
        self._closing = False
        self.stored = 0
        self.skipped = 0
        self.leader_event = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._deadline

    async def start(self) -> None:
        self._task = asyncio.create_task(self._elect(), name="redis-ingress-election")

    async def close(self) -> None:
        self._closing = True
        for task in (self._task, self._consumer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._deadline > time.monotonic():
            with contextlib.suppress(Exception):
                await self.client.eval(_RELEASE, 1, self.key, self.token)
        self._deadline = 0.0
        await self.client.aclose()
        await self._sub_client.aclose()

    # --- election -----------------------------------------------------------------------

    async def _elect(self) -> None:
        renew_every = self.lease_ms / 3000
        while not self._closing:
            started = time.monotonic()
            try:
                if self.is_leader:
                    ok = await self.client.eval(_RENEW, 1, self.key, self.token, self.lease_ms)
                else:
                    ok = await self.client.set(self.key, self.token, nx=True, px=self.lease_ms)
                if ok:
                    # The key lives lease_ms from when Redis applied the command, which is
                    # after `started`; keep a margin for clock-rate differences.
                    self._deadline = started + self.lease_ms * 0.8 / 1000
                    self._ensure_consumer()
                else:
                    self._step_down()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("ingress election: redis unavailable (%s)", exc)
                if not self.is_leader:
                    self._step_down()
            except Exception:
                log.exception("ingress election failed")
            await asyncio.sleep(renew_every * (0.9 + 0.2 * random.random()))

    def _ensure_consumer(self) -> None:
        if self._consumer is None or self._consumer.done():
            log.info("this replica now leads the Redis ingress")
            self._consumer = asyncio.create_task(self._consume(), name="redis-ingress")

    def _step_down(self) -> None:
        self._deadline = 0.0
        self.leader_event.clear()
        consumer, self._consumer = self._consumer, None
        if consumer is not None and not consumer.done():
            log.info("this replica no longer leads the Redis ingress")
            consumer.cancel()

    # --- consuming ----------------------------------------------------------------------

    async def _consume(self) -> None:
        pubsub = self._sub_client.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.psubscribe(OUTPUT_PATTERN, STATUS_PATTERN)
            # Wait for both confirmations before declaring the subscription live.
            confirmed = 0
            while confirmed < 2:
                msg = await pubsub.get_message(timeout=5.0)
                if msg is not None and msg["type"] == "psubscribe":
                    confirmed += 1
            self.leader_event.set()
            while self.is_leader:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None or msg["type"] != "pmessage":
                    continue
                if not self.is_leader:
                    log.warning("ingress lease lapsed; a message was left to the next leader")
                    break
                await self.handle(_text(msg["channel"]), msg["data"])
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("ingress subscription lost: %s", exc)
        finally:
            self.leader_event.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        # Lost the subscription while leading: let another replica (or us) take over.
        if self._deadline and not self._closing:
            with contextlib.suppress(Exception):
                await self.client.eval(_RELEASE, 1, self.key, self.token)
            self._deadline = 0.0

    async def handle(self, channel: str, data: Any) -> bool:
        """Store one producer message; False (logged) when it is malformed or refused."""
        from dashboard_api.schemas.tasks import OutputAppend, TaskUpdate
        from dashboard_api.services import tasks as service

        target = parse_ingress_channel(channel)
        if target is None:
            self.skipped += 1
            log.warning("ingress: ignoring a message on %r", channel)
            return False
        task_id, kind = target
        ctx = self.ctx
        settings = self.settings
        try:
            body = orjson.loads(data)
            if not isinstance(body, dict):
                raise ValueError("the message is not a JSON object")
            if kind == "output":
                append = OutputAppend.model_validate(body)
                chunks = append.as_chunks()
                if len(chunks) > settings.max_chunks_per_request:
                    raise ValueError("too many chunks in one message")
                async with ctx.db.write() as session:
                    await service.append_output(
                        session,
                        task_id=task_id,
                        chunks=chunks,
                        now=ctx.clock.now(),
                        cap_bytes=settings.output_cap_bytes,
                        max_chunk_bytes=settings.max_chunk_bytes,
                    )
            else:
                update = TaskUpdate.model_validate(body)
                async with ctx.db.write() as session:
                    await service.update_task(
                        session,
                        task_id=task_id,
                        body=update,
                        now=ctx.clock.now(),
                        prices=ctx.prices,
                    )
        except asyncio.CancelledError:
            raise
        except (orjson.JSONDecodeError, ValidationError, ValueError, ProblemError) as exc:
            self.skipped += 1
            log.warning("ingress: skipping a message on %s: %s", channel, _short(exc))
            return False
        except Exception:
            self.skipped += 1
            log.exception("ingress: could not store a message on %s", channel)
            return False
        self.stored += 1
        return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short(exc: Exception) -> str:
    text = str(exc).replace("\n", " ")
    return text[:300]
