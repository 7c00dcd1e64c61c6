"""PostgreSQL + Redis only: two replicas, the Redis ingress, and a Redis restart mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from dashboard_api.client import DashboardClient
from dashboard_api.db.engine import Database
from dashboard_api.realtime.broker import BrokerUnavailable
from dashboard_api.services.tokens import create_token
from dashboard_api.settings import Settings
from dashboard_api.timeutil import SystemClock
from tests.support.env import REDIS_URL, flush_redis_prefix, require_services, truncate
from tests.support.servers import free_port, serve_app
from tests.support.ws import recv_json, send_json

pytestmark = pytest.mark.slow


@pytest.fixture
async def pg(pg_url: str) -> str:
    require_services()
    await truncate(pg_url)
    return pg_url


async def _tokens(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        out = {}
        async with db.write() as session:
            for role in ("user", "agent"):
                token, _ = await create_token(
                    session,
                    user_id=f"{role}-1",
                    role=role,
                    now=SystemClock().now(),
                )
                out[role] = token
        return out
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def _replica(env: dict[str, str]) -> AsyncIterator[str]:
    async with _replica_process(env) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def _replica_process(env: dict[str, str]) -> AsyncIterator[tuple[str, Any]]:
    """A uvicorn replica the test may also kill; yields (base url, process).

    Its stderr (a JSON log line per request) goes to a file, read only if it fails to
    start. A pipe nobody reads hung the suite: once asyncio has buffered 128 KiB of it,
    it stops reading; the replica then blocks on its next log write (frozen mid-test),
    and on Python 3.11 a `proc.wait()` begun before the process died never returns
    while one of its pipes is still open, so the cleanup below waited forever even
    after SIGKILL.
    """
    port = free_port()
    with tempfile.TemporaryFile() as errors:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "dashboard_api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--ws-per-message-deflate",
            "false",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=errors,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as http:
                for _ in range(300):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"{url}/api/health")).status_code == 200:
                            break
                    if proc.returncode is not None:
                        errors.seek(0)
                        raise RuntimeError(errors.read().decode()[-2000:])
                    await asyncio.sleep(0.05)
            yield url, proc
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # in case the test froze it
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
            if proc.returncode is None:
                proc.kill()
                # Bounded all the same: a hang here is what the test timeout cannot name.
                await asyncio.wait_for(proc.wait(), 30)
            # Close the transport while this loop runs: left to the garbage collector, it
            # is closed later through this (by then closed) loop, and the "Event loop is
            # closed" error fails whichever test the worker runs at that time.
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()


async def _follow_all(url: str, token: str, task_id: str) -> list[tuple[int, str]]:
    got: list[tuple[int, str]] = []
    async with DashboardClient(url, token) as client:
        async for event in client.follow(task_id, initial_backoff=0.05, max_backoff=0.5):
            if event.kind == "output":
                got.append((event.seq or 0, event.content or ""))
            elif event.terminal:
                break
    return got


def _metric(text: str, sample: str) -> float:
    """The value of one sample (name with its labels, as rendered) in a /metrics page."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics")


async def test_two_replicas_share_events_and_ingress_stores_once(pg: str) -> None:
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:"
    env = {
        "DASHBOARD_DATABASE_URL": pg,
        "DASHBOARD_REDIS_URL": REDIS_URL,
        "DASHBOARD_REDIS_PREFIX": prefix,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
    }
    tokens = await _tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    # The producer channels (`task:{id}:output`) have no prefix: every ingress on this
    # Redis (other xdist workers, other test runs) hears them. A task id of its own keeps
    # their messages out of this test's task and this test's out of theirs.
    ing = f"ing-{uuid.uuid4().hex[:8]}"
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with _replica(env) as url_a, _replica(env) as url_b, httpx.AsyncClient() as http:
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
            follower = asyncio.create_task(_follow_all(url_b, tokens["user"], "two"))
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
            follower = asyncio.create_task(_follow_all(url_b, tokens["user"], ing))
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
            leaders = [_metric(text, "dashboard_ingress_leader") for text in scraped]
            assert sorted(leaders) == [0.0, 1.0]
            lead = scraped[leaders.index(1.0)]
            assert _metric(lead, 'dashboard_ingress_messages_total{outcome="stored"}') >= 101
            assert _metric(lead, 'dashboard_ingress_messages_total{outcome="skipped"}') >= 4
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
    tokens = await _tokens(pg)
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
    tokens = await _tokens(pg)
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


@pytest.mark.parametrize("stop", ["kill", "terminate"])
async def test_ingress_leader_change_stores_every_message_exactly_once(pg: str, stop: str) -> None:
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:"
    env = {
        "DASHBOARD_DATABASE_URL": pg,
        "DASHBOARD_REDIS_URL": REDIS_URL,
        "DASHBOARD_REDIS_PREFIX": prefix,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
    }
    tokens = await _tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    task_id = f"lead-{uuid.uuid4().hex[:8]}"  # Pub/Sub channels are shared by every test run
    channel = f"task:{task_id}:output"
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with _replica_process(env) as (url_a, proc_a), httpx.AsyncClient() as http:
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
            async with _replica_process(env) as (url_b, _):
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
    tokens = await _tokens(pg)
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    task_id = f"fresh-{uuid.uuid4().hex[:8]}"
    channel = f"task:{task_id}:output"
    leader_key = f"{prefix}ingress:leader"
    redis = aioredis.Redis.from_url(REDIS_URL)

    async def gauge(http: httpx.AsyncClient, url: str, name: str) -> float:
        return _metric((await http.get(f"{url}/metrics")).text, name)

    try:
        async with (
            _replica_process(env) as (url_a, proc_a),
            _replica_process(env) as (url_b, proc_b),
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
            async with _replica_process(env) as (url_c, _):
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
    tokens = await _tokens(pg)
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
