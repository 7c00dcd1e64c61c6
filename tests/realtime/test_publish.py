"""What a replica publishes: each event's message (its payload with its channel, a payload
queued on two channels serialized once) and the Redis broker's several messages in one
script call, in order, or pipelined when Redis refuses scripts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.realtime.broker import RedisBroker
from dashboard_api.realtime.runtime import _messages
from tests.support.env import REDIS_URL, require_services

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_payloads = st.dictionaries(st.text(), _values, max_size=6)


@given(st.lists(st.tuples(st.lists(st.text(), min_size=1, max_size=3), _payloads), max_size=5))
def test_each_message_is_its_payload_with_its_channel(
    queued: list[tuple[list[str], dict[str, Any]]],
) -> None:
    # One payload object queued on several channels, as publish_status does.
    events = [(channel, payload) for channels, payload in queued for channel in channels]
    messages = _messages(events)
    assert [channel for channel, _ in messages] == [channel for channel, _ in events]
    for (channel, payload), (_, data) in zip(events, messages, strict=True):
        assert orjson.loads(data) == {**payload, "channel": channel}


async def _received(prefix: str, count: int, publish: Any) -> list[tuple[str, bytes]]:
    """The messages of channels under `prefix` heard while `publish()` runs."""
    client = aioredis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(f"{prefix}*")
        await pubsub.get_message(timeout=2)  # the subscription's confirmation
        await publish()
        heard: list[tuple[str, bytes]] = []
        async with asyncio.timeout(10):
            while len(heard) < count:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    heard.append((message["channel"].decode()[len(prefix) :], message["data"]))
        return heard
    finally:
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.parametrize("scripts_refused", [False, True])
async def test_redis_broker_publishes_many_messages_in_order(scripts_refused: bool) -> None:
    require_services()
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:ev:"
    broker = RedisBroker(REDIS_URL, prefix=prefix)
    if scripts_refused:  # as a Redis with scripting disabled answers
        broker._publish_all = broker.client.register_script("return redis.error_reply('NOPERM')")
    messages = [(f"task:t{i % 3}", orjson.dumps({"n": i})) for i in range(40)]
    try:
        heard = await _received(prefix, 40, lambda: broker.publish_many(messages))
        assert heard == messages
        assert broker.scripted_publish is not scripts_refused
        # And the next batch, the same way.
        again = await _received(prefix, 2, lambda: broker.publish_many(messages[:2]))
        assert again == messages[:2]
    finally:
        await broker.close()
