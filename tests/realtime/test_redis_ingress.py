"""PostgreSQL + Redis only: the Redis ingress across replicas (a leader change stores every
message once; a new replica does not take over; a prefix keeps deployments apart)."""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from dashboard_api.settings import Settings
from tests.support.env import REDIS_URL, flush_redis_prefix
from tests.support.replicas import (
    metric_value,
    replica_process,
    replica_tokens,
)
from tests.support.servers import serve_app

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop", ["kill", "terminate"])
async def test_ingress_leader_change_stores_every_message_exactly_once(pg: str, stop: str) -> None:
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:"
    env = {
        "DASHBOARD_DATABASE_URL": pg,
        "DASHBOARD_REDIS_URL": REDIS_URL,
        "DASHBOARD_REDIS_PREFIX": prefix,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
    }
    tokens = await replica_tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    task_id = f"lead-{uuid.uuid4().hex[:8]}"  # Pub/Sub channels are shared by every test run
    channel = f"task:{task_id}:output"
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with replica_process(env) as (url_a, proc_a), httpx.AsyncClient() as http:
            r = await http.post(
                f"{url_a}/api/tasks",
                json={
                    "task_id": task_id,
                    "agent_type": "coder",
                    "input_message": "x",
                    "status": "running",
                },
                headers=agent,
            )
            assert r.status_code == 201, r.text

            reader = {"url": url_a}  # the replica that answers reads (B once A is gone)

            async def output_seq() -> int:
                r = await http.get(f"{reader['url']}/api/tasks/{task_id}", headers=agent)
                return int(r.json()["output_seq"])

            # A is alone, so it leads once a probe is stored.
            for attempt in range(200):
                body = {"content": "probe", "message_id": f"probe-{attempt}"}
                await redis.publish(channel, orjson.dumps(body))
                if await output_seq():
                    break
                await asyncio.sleep(0.05)
            assert await output_seq(), "no ingress leader"
            async with replica_process(env) as (url_b, _):
                reader["url"] = url_b
                await asyncio.sleep(1.0)  # B is listening (it holds what A stores)
                base = await output_seq()
                n = 300
                for i in range(n):
                    body = {"content": f"m{i}", "message_id": f"m-{i}"}
                    await redis.publish(channel, orjson.dumps(body))
                    if i == 100:
                        if stop == "kill":
                            proc_a.kill()
                        else:
                            proc_a.terminate()
                    await asyncio.sleep(0.01)
                # A repeated message (a producer retrying) is stored once.
                await redis.publish(
                    channel, orjson.dumps({"content": "m299", "message_id": "m-299"})
                )
                for _ in range(300):
                    if await output_seq() >= base + n:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # anything stored twice would show by now
                r = await http.get(
                    f"{url_b}/api/tasks/{task_id}/logs/full?after_seq={base}", headers=agent
                )
                contents = [c["content"] for c in r.json()["chunks"]]
                assert contents == [f"m{i}" for i in range(n)]
    finally:
        await redis.aclose()
        await flush_redis_prefix(prefix)


async def test_a_replica_that_just_started_does_not_take_over_the_ingress(pg: str) -> None:
    # A leads and freezes with messages unstored; B has listened for the whole hold window
    # and holds them; C starts just before the lead falls vacant and holds only the later
    # ones. B must take over (C would lose the first half), and C must not run at all
    # while an eligible replica is there.
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:"
    # Hold window 15 s: B must still hold the first messages once C is up, and C can
    # take 5-10 s to start on a loaded 2-core machine; C waits 5 s of vacancy.
    lease_ms = 5000
    env = {
        "DASHBOARD_DATABASE_URL": pg,
        "DASHBOARD_REDIS_URL": REDIS_URL,
        "DASHBOARD_REDIS_PREFIX": prefix,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
        "DASHBOARD_INGRESS_LEASE_MS": str(lease_ms),
    }
    tokens = await replica_tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    task_id = f"fresh-{uuid.uuid4().hex[:8]}"
    channel = f"task:{task_id}:output"
    leader_key = f"{prefix}ingress:leader"
    redis = aioredis.Redis.from_url(REDIS_URL)

    async def gauge(http: httpx.AsyncClient, url: str, name: str) -> float:
        return metric_value((await http.get(f"{url}/metrics")).text, name)

    try:
        async with (
            replica_process(env) as (url_a, proc_a),
            replica_process(env) as (url_b, proc_b),
            httpx.AsyncClient(timeout=30) as http,
        ):
            r = await http.post(
                f"{url_b}/api/tasks",
                json={"task_id": task_id, "agent_type": "coder", "input_message": "x"},
                headers=agent,
            )
            assert r.status_code == 201, r.text

            async def output_seq() -> int:
                r = await http.get(f"{url_b}/api/tasks/{task_id}", headers=agent)
                return int(r.json()["output_seq"])

            # Both started fresh together: one of them still leads, after a bounded wait.
            for attempt in range(300):
                body = {"content": "probe", "message_id": f"probe-{attempt}"}
                await redis.publish(channel, orjson.dumps(body))
                if await output_seq():
                    break
                await asyncio.sleep(0.05)
            assert await output_seq(), "no ingress leader"
            if await gauge(http, url_b, "dashboard_ingress_leader"):
                (url_a, proc_a), (url_b, proc_b) = (url_b, proc_b), (url_a, proc_a)
            loop = asyncio.get_running_loop()
            until = loop.time() + 40
            while loop.time() < until:
                if await gauge(http, url_b, "dashboard_ingress_eligible"):
                    break
                await asyncio.sleep(0.1)
            assert await gauge(http, url_b, "dashboard_ingress_eligible") == 1.0
            await asyncio.sleep(0.5)  # in-flight probes land
            base = await output_seq()

            # The leader stops storing; the test holds the lead vacant meanwhile, so that
            # no one takes over until C is up.
            proc_a.send_signal(signal.SIGSTOP)
            await redis.set(leader_key, "held-by-the-test", px=60_000)
            published = 0

            async def publish(n: int) -> None:
                nonlocal published
                for _ in range(n):
                    body = {"content": f"m{published}", "message_id": f"m-{published}"}
                    await redis.publish(channel, orjson.dumps(body))
                    published += 1

            await publish(30)  # held by B only (A is frozen, C not there yet)
            async with replica_process(env) as (url_c, _):
                await asyncio.sleep(0.3)  # C listens
                await publish(30)
                assert await gauge(http, url_c, "dashboard_ingress_eligible") == 0.0
                await redis.delete(leader_key)
                for _ in range(300):
                    if await output_seq() >= base + 60:
                        break
                    await asyncio.sleep(0.05)
                assert await gauge(http, url_b, "dashboard_ingress_leader") == 1.0
                assert await gauge(http, url_c, "dashboard_ingress_leader") == 0.0
                r = await http.get(
                    f"{url_b}/api/tasks/{task_id}/logs/full?after_seq={base}", headers=agent
                )
                contents = [c["content"] for c in r.json()["chunks"]]
                assert contents == [f"m{i}" for i in range(60)]

                # More elections between B and C while C is not eligible yet (each a coin
                # toss if C could run): B wins every one. The test takes the lead away
                # from B, then frees it.
                b_token = await redis.get(leader_key)
                assert b_token is not None
                rounds = 0
                while rounds < 2 and not await gauge(http, url_c, "dashboard_ingress_eligible"):
                    rounds += 1
                    await redis.set(leader_key, "held-by-the-test", px=60_000)
                    until = loop.time() + 10
                    while await gauge(http, url_b, "dashboard_ingress_leader"):
                        assert loop.time() < until
                        await asyncio.sleep(0.05)
                    await redis.delete(leader_key)
                    until = loop.time() + 10
                    while (holder := await redis.get(leader_key)) is None:
                        assert loop.time() < until
                        await asyncio.sleep(0.02)
                    assert holder == b_token
                assert rounds, "C became eligible too soon for another election"
            proc_a.kill()
    finally:
        await redis.aclose()
        await flush_redis_prefix(prefix)


async def test_an_ingress_prefix_keeps_deployments_on_one_redis_apart(pg: str) -> None:
    """With `redis_ingress_prefix` a deployment stores what is published to its prefixed
    channels and nothing of the plain `task:{id}:output` another deployment reads."""
    tokens = await replica_tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    deployment = f"acme-{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        _env_file=None,
        database_url=pg,
        redis_url=REDIS_URL,
        redis_prefix=f"dashtest:{uuid.uuid4().hex[:12]}:",
        redis_ingress_prefix=deployment,
        token_cache_seconds=0,
    )
    task_id = f"pfx-{uuid.uuid4().hex[:8]}"  # Pub/Sub channels are shared by every test run
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with serve_app(settings) as (_, port), httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}/api/tasks"
            body = {"task_id": task_id, "agent_type": "coder", "input_message": "x"}
            r = await http.post(url, json={**body, "status": "running"}, headers=agent)
            assert r.status_code == 201, r.text

            async def chunks() -> list[str]:
                log = (await http.get(f"{url}/{task_id}/logs/full", headers=agent)).json()
                return [c["content"] for c in log["chunks"]]

            # Leads once a probe on the prefixed channel is stored.
            for attempt in range(200):
                probe = {"content": "probe", "message_id": f"probe-{attempt}"}
                await redis.publish(f"{deployment}task:{task_id}:output", orjson.dumps(probe))
                if await chunks():
                    break
                await asyncio.sleep(0.05)
            assert await chunks(), "no ingress leader"
            await redis.publish(f"task:{task_id}:output", orjson.dumps({"content": "other"}))
            await redis.publish(
                f"{deployment}task:{task_id}:output", orjson.dumps({"content": "ours"})
            )
            await redis.publish(
                f"{deployment}task:{task_id}:status", orjson.dumps({"status": "completed"})
            )
            for _ in range(100):
                task = (await http.get(f"{url}/{task_id}", headers=agent)).json()
                if task["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            assert task["status"] == "completed"
            # Probes may still land late (a new leader stores what it held first).
            assert [c for c in await chunks() if c != "probe"] == ["ours"]
    finally:
        await redis.aclose()
        await flush_redis_prefix(settings.redis_prefix)
