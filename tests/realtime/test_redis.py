"""PostgreSQL + Redis only: two replicas sharing events, a Redis restart mid-stream, one
upstream subscription per channel (the Redis ingress's leadership: test_redis_ingress.py)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from dashboard_api.client import DashboardClient
from dashboard_api.realtime.broker import BrokerUnavailable
from dashboard_api.settings import Settings
from tests.support.env import REDIS_URL, flush_redis_prefix
from tests.support.replicas import (
    follow_all,
    metric_value,
    replica,
    replica_tokens,
)
from tests.support.servers import free_port, serve_app
from tests.support.ws import recv_json, send_json

pytestmark = pytest.mark.slow


async def test_two_replicas_share_events_and_ingress_stores_once(pg: str) -> None:
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:"
    env = {
        "DASHBOARD_DATABASE_URL": pg,
        "DASHBOARD_REDIS_URL": REDIS_URL,
        "DASHBOARD_REDIS_PREFIX": prefix,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
    }
    tokens = await replica_tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    # The producer channels (`task:{id}:output`) have no prefix: every ingress on this
    # Redis (other xdist workers, other test runs) hears them. A task id of its own keeps
    # their messages out of this test's task and this test's out of theirs.
    ing = f"ing-{uuid.uuid4().hex[:8]}"
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with replica(env) as url_a, replica(env) as url_b, httpx.AsyncClient() as http:
            # Output appended through A reaches a subscriber of B.
            r = await http.post(
                f"{url_a}/api/tasks",
                json={
                    "task_id": "two",
                    "agent_type": "coder",
                    "input_message": "x",
                    "status": "running",
                },
                headers=agent,
            )
            assert r.status_code == 201, r.text
            follower = asyncio.create_task(follow_all(url_b, tokens["user"], "two"))
            async with websockets.connect(
                f"{url_b.replace('http', 'ws')}/ws?token={tokens['user']}"
            ) as ws:
                await send_json(ws, {"type": "subscribe", "channel": "task:two"})
                assert (await recv_json(ws))["type"] == "subscribed"
                for i in range(1, 31):
                    r = await http.post(
                        f"{url_a}/api/tasks/two/output", json={"content": f"o{i}"}, headers=agent
                    )
                    assert r.status_code == 200
                live = [await recv_json(ws) for _ in range(30)]
                assert [m["seq"] for m in live] == list(range(1, 31))
            r = await http.patch(
                f"{url_a}/api/tasks/two", json={"status": "completed"}, headers=agent
            )
            assert r.status_code == 200
            assert await asyncio.wait_for(follower, 30) == [(i, f"o{i}") for i in range(1, 31)]

            # Redis ingress: every message stored exactly once with two replicas running.
            r = await http.post(
                f"{url_a}/api/tasks",
                json={
                    "task_id": ing,
                    "agent_type": "coder",
                    "input_message": "x",
                    "status": "running",
                },
                headers=agent,
            )
            assert r.status_code == 201
            # Wait for a leader: probe until one message is stored.
            stored = 0
            for _ in range(200):
                await redis.publish(f"task:{ing}:output", orjson.dumps({"content": "probe\n"}))
                task = (await http.get(f"{url_a}/api/tasks/{ing}", headers=agent)).json()
                stored = task["output_seq"]
                if stored:
                    break
                await asyncio.sleep(0.05)
            assert stored, "no ingress leader"
            await asyncio.sleep(0.3)  # let in-flight probes land
            base = (await http.get(f"{url_a}/api/tasks/{ing}", headers=agent)).json()["output_seq"]
            follower = asyncio.create_task(follow_all(url_b, tokens["user"], ing))
            for i in range(100):
                await redis.publish(
                    f"task:{ing}:output", orjson.dumps({"content": f"m{i}", "stream": "stderr"})
                )
                if i == 50:
                    await redis.publish(f"task:{ing}:output", b"not json")
                    await redis.publish(f"task:{ing}:output", orjson.dumps({"stream": "bogus"}))
                    await redis.publish(f"task:{ing}:status", orjson.dumps({"status": "nope"}))
                    missing = f"task:missing-{ing}:output"
                    await redis.publish(missing, orjson.dumps({"content": "x"}))
            await redis.publish(
                f"task:{ing}:status", orjson.dumps({"status": "completed", "result": "ok"})
            )
            got = await asyncio.wait_for(follower, 30)
            log = (
                await http.get(f"{url_a}/api/tasks/{ing}/logs/full?after_seq={base}", headers=agent)
            ).json()
            assert [c["content"] for c in log["chunks"]] == [f"m{i}" for i in range(100)]
            assert {c["stream"] for c in log["chunks"]} == {"stderr"}
            assert log["task"]["status"] == "completed"
            assert log["task"]["result"] == "ok"
            assert log["last_seq"] == base + 100
            assert [c for _, c in got][-100:] == [f"m{i}" for i in range(100)]

            # /metrics: one leader stored all of it and skipped the four bad messages.
            scraped = [(await http.get(f"{url}/metrics")).text for url in (url_a, url_b)]
            leaders = [metric_value(text, "dashboard_ingress_leader") for text in scraped]
            assert sorted(leaders) == [0.0, 1.0]
            lead = scraped[leaders.index(1.0)]
            assert metric_value(lead, 'dashboard_ingress_messages_total{outcome="stored"}') >= 101
            assert metric_value(lead, 'dashboard_ingress_messages_total{outcome="skipped"}') >= 4
    finally:
        await redis.aclose()
        await flush_redis_prefix(prefix)


@pytest.fixture
def own_redis() -> Iterator[tuple[int, Any]]:
    """A redis-server of this test's own on a spare port, that the test may stop and start."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    workdir = tempfile.mkdtemp()

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import socket
        import time

        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    class Control:
        proc = start()

        def stop(self) -> None:
            self.proc.terminate()
            self.proc.wait(10)

        def restart(self) -> None:
            self.proc = start()

    control = Control()
    try:
        yield port, control
    finally:
        control.proc.terminate()
        control.proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_redis_restart_mid_stream_recovers_without_loss(
    pg: str, own_redis: tuple[int, Any]
) -> None:
    port, control = own_redis
    settings = Settings(
        _env_file=None,
        database_url=pg,
        redis_url=f"redis://127.0.0.1:{port}/0",
        token_cache_seconds=0,
    )
    tokens = await replica_tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    async with serve_app(settings) as (app_a, port_a), serve_app(settings) as (_app_b, port_b):
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        broker_a = app_a.state.ctx.broker
        async with httpx.AsyncClient(base_url=url_b, headers=agent, timeout=30) as http:
            r = await http.post(
                "/api/tasks",
                json={
                    "task_id": "rr",
                    "agent_type": "coder",
                    "input_message": "x",
                    "status": "running",
                },
            )
            assert r.status_code == 201
            got: list[tuple[int, str]] = []
            first_ten = asyncio.Event()

            async def follow() -> None:
                async with DashboardClient(url_a, tokens["user"]) as client:
                    async for event in client.follow("rr", initial_backoff=0.05, max_backoff=0.5):
                        if event.kind == "output":
                            got.append((event.seq or 0, event.content or ""))
                            if len(got) == 10:
                                first_ten.set()
                        elif event.terminal:
                            return

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            for i in range(1, 11):
                assert (
                    await http.post("/api/tasks/rr/output", json={"content": f"x{i}"})
                ).status_code == 200
            await asyncio.wait_for(first_ten.wait(), 10)

            control.stop()
            for _ in range(200):
                if not broker_a.healthy:
                    break
                await asyncio.sleep(0.02)
            assert not broker_a.healthy
            with pytest.raises(BrokerUnavailable):
                await broker_a.ping(0.5)
            # Appends still succeed: the data is committed, the broker outage is only logged.
            for i in range(11, 31):
                assert (
                    await http.post("/api/tasks/rr/output", json={"content": f"x{i}"})
                ).status_code == 200

            control.restart()
            for _ in range(500):
                if broker_a.healthy:
                    break
                await asyncio.sleep(0.02)
            assert broker_a.healthy
            assert await broker_a.ping(2) >= 0
            for i in range(31, 41):
                assert (
                    await http.post("/api/tasks/rr/output", json={"content": f"x{i}"})
                ).status_code == 200
            assert (
                await http.patch("/api/tasks/rr", json={"status": "completed"})
            ).status_code == 200
            await asyncio.wait_for(follower, 30)
            assert got == [(i, f"x{i}") for i in range(1, 41)]


async def test_one_upstream_subscription_per_channel(pg: str) -> None:
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:"
    settings = Settings(
        _env_file=None,
        database_url=pg,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        token_cache_seconds=0,
    )
    tokens = await replica_tokens(pg)
    redis = aioredis.Redis.from_url(REDIS_URL)
    channel = f"{prefix}ev:tasks"

    async def numsub() -> int:
        return int(dict(await redis.pubsub_numsub(channel))[channel.encode()])

    try:
        async with serve_app(settings) as (_app, port):
            url = f"ws://127.0.0.1:{port}/ws?token={tokens['user']}"
            async with websockets.connect(url) as a, websockets.connect(url) as b:
                for ws in (a, b):
                    await send_json(ws, {"type": "subscribe", "channel": "tasks"})
                    assert (await recv_json(ws))["type"] == "subscribed"
                assert await numsub() == 1
                await send_json(a, {"type": "unsubscribe", "channel": "tasks"})
                assert (await recv_json(a))["type"] == "unsubscribed"
                assert await numsub() == 1
                await send_json(b, {"type": "unsubscribe", "channel": "tasks"})
                assert (await recv_json(b))["type"] == "unsubscribed"
                for _ in range(100):
                    if await numsub() == 0:
                        break
                    await asyncio.sleep(0.02)
                assert await numsub() == 0
    finally:
        await redis.aclose()
        await flush_redis_prefix(prefix)
