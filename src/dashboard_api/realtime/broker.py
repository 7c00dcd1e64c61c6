"""Brokers move serialized events between replicas: in-process (memory) or Redis Pub/Sub.

A broker has one handler (the replica's hub). Subscriptions are reference-counted per
channel: the first `subscribe(channel)` opens one upstream subscription, the last
`unsubscribe(channel)` drops it. The Redis broker re-establishes its subscriber connection
by itself (with exponential backoff) and calls the reconnect callbacks once every channel
is subscribed again, so that the hub can fill from the database what was missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from dashboard_api.aiotasks import raise_if_cancelled, stop_tasks

log = logging.getLogger(__name__)

# handler(channel, data): called for every message of a subscribed channel; must not block.
MessageHandler = Callable[[str, bytes], None]
ReconnectCallback = Callable[[], None]


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now."""


class Broker(ABC):
    """Publish bytes to channels; deliver the messages of subscribed channels to a handler."""

    backend: Literal["memory", "redis"]

    def __init__(self) -> None:
        self._handler: MessageHandler | None = None
        self._refs: dict[str, int] = {}
        self._reconnect_callbacks: list[ReconnectCallback] = []
        self.publish_failures = 0

    def set_handler(self, handler: MessageHandler) -> None:
        """Install the function that receives every message of a subscribed channel."""
        self._handler = handler

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Call `callback` each time the upstream subscriptions come back after an outage."""
        self._reconnect_callbacks.append(callback)

    @property
    def channels(self) -> list[str]:
        """The channels with at least one local subscriber."""
        return list(self._refs)

    def _deliver(self, channel: str, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            handler(channel, data)
        except Exception:
            log.exception("broker handler failed for channel %s", channel)

    def _fire_reconnect(self) -> None:
        for callback in list(self._reconnect_callbacks):
            try:
                callback()
            except Exception:
                log.exception("broker reconnect callback failed")

    async def subscribe(self, channel: str) -> None:
        """Take one reference on `channel`; the first one subscribes upstream (and waits)."""
        count = self._refs.get(channel, 0)
        self._refs[channel] = count + 1
        if count == 0:
            await self._subscribe_upstream(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Drop one reference on `channel`; the last one unsubscribes upstream."""
        count = self._refs.get(channel, 0)
        if count <= 1:
            self._refs.pop(channel, None)
            if count == 1:
                await self._unsubscribe_upstream(channel)
        else:
            self._refs[channel] = count - 1

    @abstractmethod
    async def _subscribe_upstream(self, channel: str) -> None: ...

    @abstractmethod
    async def _unsubscribe_upstream(self, channel: str) -> None: ...

    @abstractmethod
    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish messages in order; raises `BrokerUnavailable` when they could not be sent."""

    async def publish(self, channel: str, data: bytes) -> None:
        """Publish one message."""
        await self.publish_many([(channel, data)])

    @property
    @abstractmethod
    def healthy(self) -> bool:
        """Whether the broker currently delivers messages."""

    @abstractmethod
    async def ping(self, timeout: float) -> float:
        """Round-trip to the broker; returns the latency in ms, raises when it is down."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (in the background where it may take a while)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every connection and task."""


class MemoryBroker(Broker):
    """In-process broker for a single replica: publish calls the handler directly."""

    backend: Literal["memory", "redis"] = "memory"

    async def _subscribe_upstream(self, channel: str) -> None:
        return None

    async def _unsubscribe_upstream(self, channel: str) -> None:
        return None

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for channel, data in messages:
            if channel in self._refs:
                self._deliver(channel, data)

    @property
    def healthy(self) -> bool:
        return True

    async def ping(self, timeout: float) -> float:
        return 0.0


# PUBLISH of each (channel, message) pair of ARGV, in order: several messages in one
# command. redis-py packs each command of a pipeline and parses each reply in Python
# (some 10 µs of the replica's CPU per message: a tenth of an OTLP batch's); one command
# of 2n arguments and one reply cost a third of that.
_PUBLISH_ALL = """
for i = 1, #ARGV, 2 do
    redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""
# Messages per script call: a script holds Redis while it runs.
_PUBLISH_ALL_AT_ONCE = 1000


def redis_db_number(url: str) -> int:
    """The database number of a redis:// URL (path `/N` or `?db=N`), 0 by default."""
    parsed = urlparse(url)
    path = parsed.path.strip("/")
    if path.isdigit():
        return int(path)
    for part in parsed.query.split("&"):
        key, _, value = part.partition("=")
        if key == "db" and value.isdigit():
            return int(value)
    return 0


def default_channel_prefix(url: str) -> str:
    """Pub/Sub channels are global to a Redis server, so the prefix names the DB number."""
    return f"dashboard:{redis_db_number(url)}:ev:"


class RedisBroker(Broker):
    """Redis Pub/Sub with one subscriber connection per replica that reconnects by itself."""

    backend: Literal["memory", "redis"] = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        subscribe_timeout: float = 2.0,
        max_backoff: float = 5.0,
        keepalive_seconds: float = 5.0,
        publish_timeout: float = 2.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix if prefix is not None else default_channel_prefix(url)
        self._control = f"{self.prefix}__control__"
        self._subscribe_timeout = subscribe_timeout
        self._max_backoff = max_backoff
        self._keepalive = keepalive_seconds
        self._publish_timeout = publish_timeout
        # Commands (PUBLISH, PING): short timeouts so that an outage fails fast.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=0
        )
        # The subscriber connection has no read timeout: it waits for messages.
        self._sub_client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, health_check_interval=0
        )
        self._pubsub: Any = None
        self._connected = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._confirm: dict[str, list[asyncio.Future[None]]] = {}
        self._connected_event = asyncio.Event()
        self.reconnects = 0
        self._publish_all = self.client.register_script(_PUBLISH_ALL)
        # False once Redis refused the script (scripting disabled or not allowed):
        # several messages then go as a pipeline of PUBLISH commands.
        self.scripted_publish = True

    @property
    def healthy(self) -> bool:
        return self._connected and not self._closing

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-broker-reader")

    async def close(self) -> None:
        self._closing = True
        try:
            await stop_tasks((self._task,), what="redis broker")
            self._task = None
        finally:
            # Also when cancelled: the connections must not outlive the loop.
            await self._drop_pubsub()
            await self.client.aclose()
            await self._sub_client.aclose()

    async def ping(self, timeout: float) -> float:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis: {exc or type(exc).__name__}") from exc
        if not self._connected:
            raise BrokerUnavailable("redis: subscriber connection is down")
        return (time.perf_counter() - start) * 1000

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if not messages:
            return
        # While the subscriber connection is down, fail fast: the request that produced
        # these events has committed and must not hang on the broker.
        timeout = self._publish_timeout if self._connected else min(0.25, self._publish_timeout)
        try:
            async with asyncio.timeout(timeout):
                if len(messages) == 1:
                    channel, data = messages[0]
                    await self.client.publish(self.prefix + channel, data)
                elif self.scripted_publish:
                    await self._publish_scripted(messages)
                else:
                    await self._publish_pipelined(messages)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"redis publish failed: {exc or 'timeout'}") from exc

    async def _publish_scripted(self, messages: Sequence[tuple[str, bytes]]) -> None:
        prefix = self.prefix
        for start in range(0, len(messages), _PUBLISH_ALL_AT_ONCE):
            part = messages[start : start + _PUBLISH_ALL_AT_ONCE]
            args: list[str | bytes] = []
            for channel, data in part:
                args += (prefix + channel, data)
            try:
                await self._publish_all(keys=[], args=args)
            except ResponseError as exc:  # nothing of this part was published
                log.warning("redis refused the publish script (%s); pipelining instead", exc)
                self.scripted_publish = False
                await self._publish_pipelined(messages[start:])
                return

    async def _publish_pipelined(self, messages: Sequence[tuple[str, bytes]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(self.prefix + channel, data)
            await pipe.execute()

    async def _subscribe_upstream(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        full = self.prefix + channel
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                # The reader subscribes every channel in `_refs` when it (re)connects.
                return
            self._confirm.setdefault(full, []).append(fut)
            try:
                await pubsub.subscribe(full)
            except (RedisError, OSError) as exc:
                log.warning("redis subscribe %s failed (%s); will retry on reconnect", full, exc)
                self._discard_confirm(full, fut)
                return
        # Wait for Redis to confirm, so that nothing published from now on is missed.
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await asyncio.shield(fut)
        except TimeoutError:
            log.warning("redis did not confirm the subscription to %s in time", full)
            self._discard_confirm(full, fut)

    def _discard_confirm(self, full: str, fut: asyncio.Future[None]) -> None:
        waiters = self._confirm.get(full)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                self._confirm.pop(full, None)

    async def _unsubscribe_upstream(self, channel: str) -> None:
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                await pubsub.unsubscribe(self.prefix + channel)
            except (RedisError, OSError) as exc:
                log.warning("redis unsubscribe %s failed: %s", channel, exc)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._connected = False
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _connect(self) -> None:
        pubsub = self._sub_client.pubsub(ignore_subscribe_messages=False)
        async with self._lock:
            self._pubsub = pubsub
            channels = [self.prefix + ch for ch in self._refs]
            # One command: Redis applies it whole, and the control channel's confirmation
            # (last in the list) means every channel before it is subscribed too.
            await pubsub.subscribe(*channels, self._control)

    async def _run(self) -> None:
        backoff = 0.05
        first = True
        while not self._closing:
            raise_if_cancelled()
            try:
                await self._connect()
                await self._read_loop(first)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._connected or first:
                    log.warning("redis subscriber connection lost: %s", exc)
            except Exception:
                log.exception("redis subscriber loop failed")
            await self._drop_pubsub()
            first = False
            for waiters in self._confirm.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)  # re-subscribed (and resynced) on reconnect
            self._confirm.clear()
            if self._closing:
                break
            delay = min(self._max_backoff, backoff) * (0.5 + random.random())
            backoff = min(self._max_backoff, backoff * 2)
            await asyncio.sleep(delay)

    async def _read_loop(self, first: bool) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        idle = 0.0
        while not self._closing:
            msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            if msg is None:
                idle += 1.0
                if idle >= self._keepalive:
                    idle = 0.0
                    await pubsub.ping()
                continue
            idle = 0.0
            kind = msg["type"]
            raw_channel = msg["channel"]
            channel = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
            if kind == "message":
                if channel.startswith(self.prefix):
                    data = msg["data"]
                    self._deliver(channel[len(self.prefix) :], data)
            elif kind == "subscribe":
                if channel == self._control and not self._connected:
                    self._connected = True
                    if not first:
                        self.reconnects += 1
                        log.info("redis subscriber reconnected")
                        self._fire_reconnect()
                waiters = self._confirm.pop(channel, [])
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)


def make_broker(redis_url: str | None, *, prefix: str | None = None) -> Broker:
    """The Redis broker when a URL is configured, else the in-process one."""
    if redis_url:
        return RedisBroker(redis_url, prefix=prefix)
    return MemoryBroker()
