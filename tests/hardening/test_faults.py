"""Faults that really happen: PostgreSQL stopped under producers, Redis restarted
mid-stream, a replica SIGKILLed while clients stream from it, and one SIGKILLed in the
middle of the transaction of a terminal task update (the conversation still gets exactly
one reply when the producer retries on the other replica).

Everything runs against a PostgreSQL cluster and a redis-server of this module's own
(spare ports, temp dirs) and uvicorn subprocesses; the shared servers are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from dashboard_api.client import DashboardClient
from dashboard_api.db.migrate import upgrade_to_head
from tests.support.dependencies import OwnPostgres, OwnRedis
from tests.support.figures import FIGURE_LINES
from tests.support.servers import UvicornProcess, base_env
from tests.support.tokens import create_tokens

# One PostgreSQL cluster and redis-server for the module: its tests stay on one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hardening-faults")]

# What the faults cost, for RELIABILITY.md (printed at the end of the module).
FIGURES: dict[str, Any] = {}


@dataclass
class Infra:
    pg: OwnPostgres
    redis: OwnRedis
    tokens: dict[str, str]
    logs: Path

    def replica(self, name: str) -> UvicornProcess:
        env = base_env(self.pg.url, self.redis.url, DASHBOARD_DATABASE_POOL_SIZE="5")
        return UvicornProcess(env, log=self.logs / f"{name}.log").start()


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    pg, redis = OwnPostgres(), OwnRedis()
    try:
        pg.start()
        redis.start()
        upgrade_to_head(pg.url)
        yield Infra(pg, redis, create_tokens(pg.url), tmp_path_factory.mktemp("faults"))
    finally:
        FIGURE_LINES.append(f"faults survived: {FIGURES}")
        redis.destroy()
        pg.destroy()


def _h(infra: Infra, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {infra.tokens[role]}"}


def _create_task(http: httpx.Client, task_id: str) -> None:
    r = http.post(
        "/api/tasks",
        json={"task_id": task_id, "agent_type": "c", "input_message": "x", "status": "running"},
    )
    assert r.status_code == 201, r.text


def _full_log(url: str, infra: Infra, task_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/tasks/{task_id}/logs/full", headers=_h(infra, "user"), timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_postgres_stopped_under_producers_answers_503_and_recovers_alone(infra: Infra) -> None:
    server = infra.replica("pg-down")
    try:
        with httpx.Client(base_url=server.url, headers=_h(infra, "agent"), timeout=30) as http:
            _create_task(http, "pg-1")
            acked: list[tuple[int, str]] = []

            def append(content: str) -> httpx.Response:
                r = http.post("/api/tasks/pg-1/output", json={"content": content})
                if r.status_code == 200:
                    assert r.json()["first_seq"] == r.json()["last_seq"]
                    acked.append((r.json()["last_seq"], content))
                return r

            for i in range(20):
                assert append(f"before-{i}").status_code == 200

            infra.pg.stop()
            refused = 0
            in_doubt: list[str] = []
            for i in range(10):
                r = append(f"down-{i}")
                if r.status_code == 200:
                    continue  # answered before the outage was noticed: acknowledged, kept
                assert r.status_code == 503, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                problem = r.json()
                assert problem["dependency"] == "database"
                assert "database" in problem["detail"].lower()
                assert int(r.headers["retry-after"]) >= 1
                in_doubt.append(f"down-{i}")
                refused += 1
            assert refused >= 5
            ready = http.get("/api/health/ready")
            assert ready.status_code == 503
            assert ready.json()["dependency"] == "database"
            assert http.get("/api/health").status_code == 200  # the process itself is fine

            infra.pg.start()  # the app is not restarted: it must reconnect by itself
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if http.get("/api/health/ready").status_code == 200:
                    break
                time.sleep(0.1)
            for i in range(20):
                for _ in range(50):  # a producer retries a 503 (the pool may hold dead links)
                    r = append(f"after-{i}")
                    if r.status_code == 200:
                        break
                    assert r.status_code == 503, r.text
                    time.sleep(0.1)
                assert r.status_code == 200
            assert http.patch("/api/tasks/pg-1", json={"status": "completed"}).status_code == 200

        log = _full_log(server.url, infra, "pg-1")
        chunks = [(c["seq"], c["content"]) for c in log["chunks"]]
        assert [s for s, _ in chunks] == list(range(1, len(chunks) + 1)), "gap in the seqs"
        stored = dict(chunks)
        for seq, content in acked:  # every acknowledged chunk, at its seq, exactly once
            assert stored[seq] == content
        contents = [c for _, c in chunks]
        assert len(contents) == len(set(contents)), "a chunk was stored twice"
        # Nothing half-written: a chunk that is not acknowledged can only be one whose
        # answer was a 503 sent while the commit's outcome was unknown (none expected).
        unacked = set(contents) - {c for _, c in acked}
        assert unacked <= set(in_doubt), unacked
        FIGURES["pg_outage"] = {"acked": len(acked), "refused_503": refused}
    finally:
        with contextlib.suppress(Exception):
            infra.pg.start()
        server.stop()


async def _append_all(url: str, infra: Infra, task_id: str, contents: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, headers=_h(infra, "agent"), timeout=30) as http:
        for content in contents:
            r = await http.post(f"/api/tasks/{task_id}/output", json={"content": content})
            assert r.status_code == 200, r.text


def test_redis_restarted_mid_stream_loses_no_acknowledged_chunk(infra: Infra) -> None:
    a, b = infra.replica("redis-a"), infra.replica("redis-b")
    try:
        with httpx.Client(base_url=b.url, headers=_h(infra, "agent"), timeout=30) as http:
            _create_task(http, "rd-1")

        async def scenario() -> list[tuple[int, str]]:
            got: list[tuple[int, str]] = []
            ten = asyncio.Event()

            async def follow() -> None:
                async with DashboardClient(a.url, infra.tokens["user"]) as client:
                    async for event in client.follow("rd-1", initial_backoff=0.05, max_backoff=0.5):
                        if event.kind == "output":
                            got.append((event.seq or 0, event.content or ""))
                            if len(got) == 10:
                                ten.set()
                        elif event.terminal:
                            return

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            await _append_all(b.url, infra, "rd-1", [f"r{i}" for i in range(1, 11)])
            await asyncio.wait_for(ten.wait(), 15)
            infra.redis.stop()
            # Producers are still acknowledged: the log is in PostgreSQL, not in Redis.
            await _append_all(b.url, infra, "rd-1", [f"r{i}" for i in range(11, 31)])
            infra.redis.start()
            await asyncio.sleep(0.5)
            await _append_all(b.url, infra, "rd-1", [f"r{i}" for i in range(31, 41)])
            async with httpx.AsyncClient(base_url=b.url, headers=_h(infra, "agent")) as http:
                r = await http.patch("/api/tasks/rd-1", json={"status": "completed"})
                assert r.status_code == 200
            await asyncio.wait_for(follower, 60)
            return got

        got = asyncio.run(scenario())
        assert got == [(i, f"r{i}") for i in range(1, 41)]
        log = _full_log(a.url, infra, "rd-1")
        assert [(c["seq"], c["content"]) for c in log["chunks"]] == got
        FIGURES["redis_restart"] = {"chunks": len(got)}
    finally:
        a.stop()
        b.stop()


async def _resuming_subscriber(
    urls: list[str], token: str, task_id: str, got: list[tuple[int, str]], switched: list[str]
) -> None:
    """Follow a task, moving to the next replica whenever the connection breaks."""
    last = 0
    attempt = 0
    while True:
        url = urls[attempt % len(urls)].replace("http://", "ws://")
        try:
            async with websockets.connect(f"{url}/ws?token={token}", open_timeout=5) as ws:
                sub = {"type": "subscribe", "channel": f"task:{task_id}", "since_seq": last}
                await ws.send(orjson.dumps(sub).decode())
                async for raw in ws:
                    msg = orjson.loads(raw)
                    if msg["type"] == "task_output" and msg["seq"] > last:
                        assert msg["seq"] == last + 1, f"gap: {last} -> {msg['seq']}"
                        last = msg["seq"]
                        got.append((last, msg["content"]))
                    elif msg["type"] == "task_status" and msg["status"] == "completed":
                        return
        except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError):
            pass
        attempt += 1
        switched.append(urls[attempt % len(urls)])
        await asyncio.sleep(0.05)


def test_replica_killed_while_streaming_clients_resume_on_another(infra: Infra) -> None:
    a, b = infra.replica("kill-a"), infra.replica("kill-b")
    try:
        with httpx.Client(base_url=b.url, headers=_h(infra, "agent"), timeout=30) as http:
            _create_task(http, "kl-1")

        async def scenario() -> tuple[list[list[tuple[int, str]]], list[list[str]]]:
            gots: list[list[tuple[int, str]]] = [[] for _ in range(5)]
            switches: list[list[str]] = [[] for _ in range(5)]
            subscribers = [
                asyncio.create_task(
                    _resuming_subscriber([a.url, b.url], infra.tokens["user"], "kl-1", g, s)
                )
                for g, s in zip(gots, switches, strict=True)
            ]
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(
                base_url=b.url, headers=_h(infra, "agent"), timeout=30
            ) as http:
                for i in range(1, 101):
                    r = await http.post("/api/tasks/kl-1/output", json={"content": f"k{i}"})
                    assert r.status_code == 200, r.text
                    if i == 40:
                        while min(len(g) for g in gots) < 20:
                            await asyncio.sleep(0.02)
                        a.kill()  # SIGKILL mid-stream: no goodbye to anyone
                    await asyncio.sleep(0.005)
                r = await http.patch("/api/tasks/kl-1", json={"status": "completed"})
                assert r.status_code == 200
            await asyncio.wait_for(asyncio.gather(*subscribers), 60)
            return gots, switches

        gots, switches = asyncio.run(scenario())
        expected = [(i, f"k{i}") for i in range(1, 101)]
        for got, switched in zip(gots, switches, strict=True):
            assert got == expected
            assert switched
            assert switched[0] == b.url
        FIGURES["replica_kill"] = {"subscribers": len(gots), "chunks": len(expected)}
    finally:
        a.stop()
        b.stop()


async def _lock_waiters(pg: asyncpg.Connection, table: str) -> int:
    """Backends waiting for a row lock in a statement reading `table` (`pg` in no transaction)."""
    found = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query ILIKE '%FROM ' || $1 || ' %'",
        table,
    )
    return int(found)


async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def _killed_terminal_update(
    infra: Infra, a: UvicornProcess, b: UvicornProcess
) -> dict[str, Any]:
    user, agent = _h(infra, "user"), _h(infra, "agent")
    final = {"status": "completed", "result": "the one answer", "cost_usd": 0.25,
             "input_tokens": 1000, "output_tokens": 500}  # fmt: skip
    async with httpx.AsyncClient(base_url=b.url, timeout=60) as http:
        r = await http.post(
            "/api/conversations", json={"title": "kill", "agent_type": "once"}, headers=user
        )
        assert r.status_code == 201, r.text
        cid = r.json()["conversation_id"]
        r = await http.post(
            f"/api/conversations/{cid}/messages", json={"content": "go"}, headers=user
        )
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        r = await http.patch(f"/api/tasks/{task_id}", json={"status": "running"}, headers=agent)
        assert r.status_code == 200, r.text
        r = await http.post(f"/api/tasks/{task_id}/output", json={"content": "w"}, headers=agent)
        assert r.status_code == 200, r.text

        ws_url = b.url.replace("http://", "ws://") + f"/ws?token={infra.tokens['user']}"
        async with websockets.connect(ws_url, open_timeout=10) as ws:
            sub = {"type": "subscribe", "channel": f"conversation:{cid}"}
            await ws.send(orjson.dumps(sub).decode())
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"

            # Hold alice's conversation row: A's terminal update locks the task row, writes
            # it, then waits here for the conversation — in the middle of its transaction.
            # The locks are watched from another connection: inside a transaction,
            # pg_stat_activity is a snapshot taken at its first read.
            dsn = infra.pg.url.replace("+asyncpg", "")
            pg, watch = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
            requests: list[asyncio.Task[httpx.Response]] = []
            try:
                blocker = pg.transaction()
                await blocker.start()
                await pg.execute(
                    "SELECT 1 FROM conversations WHERE conversation_id = $1 FOR UPDATE", cid
                )
                async with httpx.AsyncClient(base_url=a.url, timeout=60) as to_a:
                    on_a = asyncio.create_task(
                        to_a.patch(f"/api/tasks/{task_id}", json=final, headers=agent)
                    )
                    requests.append(on_a)

                    async def a_waits() -> bool:
                        if on_a.done():  # it should be stuck: say why it is not
                            raise AssertionError(f"A answered: {on_a.result().text}")
                        return await _lock_waiters(watch, "conversations") >= 1

                    assert await _until(a_waits, 30), "A's update never reached the lock"
                    a.kill()  # SIGKILL with the transaction open: no commit, no answer
                    with pytest.raises(httpx.TransportError):
                        await on_a
                # The producer retries on the other replica. B queues behind the dead
                # transaction's task-row lock until PostgreSQL drops that backend.
                retry = asyncio.create_task(
                    http.patch(f"/api/tasks/{task_id}", json=final, headers=agent)
                )
                requests.append(retry)

                async def b_waits() -> bool:
                    return await _lock_waiters(watch, "tasks") >= 1

                b_queued = await _until(b_waits, 10)  # a figure, not an assertion
                await blocker.rollback()
                r = await retry
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "completed"
                # The producer cannot know which attempt landed: it retries once more.
                r = await http.patch(f"/api/tasks/{task_id}", json=final, headers=agent)
                assert r.status_code == 200, r.text
            finally:
                # Even on failure: no request left running into the next test.
                for pending in requests:
                    pending.cancel()
                await asyncio.gather(*requests, return_exceptions=True)
                await pg.close()
                await watch.close()

            # A sentinel after the reply: once it is heard, the reply's event was too.
            r = await http.post(
                f"/api/conversations/{cid}/messages",
                json={"content": "sentinel", "create_task": False},
                headers=user,
            )
            assert r.status_code == 201, r.text
            heard: list[dict[str, Any]] = []
            while not any(m["content"] == "sentinel" for m in heard):
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg["type"] == "message_created":
                    heard.append(msg["message"])

        r = await http.get(
            f"/api/conversations/{cid}/messages", params={"per_page": 200}, headers=user
        )
        messages = r.json()["items"]
        replies = [m for m in messages if m["role"] != "user"]
        assert [(m["role"], m["content"], m["task_id"]) for m in replies] == [
            ("assistant", "the one answer", task_id)
        ]
        assert [m["content"] for m in heard if m["role"] != "user"] == ["the one answer"]
        conv = (await http.get(f"/api/conversations/{cid}", headers=user)).json()
        assert (conv["message_count"], conv["task_count"]) == (3, 1)
        assert conv["total_cost_usd"] == 0.25
        log = (await http.get(f"/api/tasks/{task_id}/logs/full", headers=user)).json()
        statuses = [e["status"] for e in log["events"]]
        assert statuses == ["queued", "running", "completed"], statuses
        assert log["task"]["cost_usd"] == 0.25
        r = await http.get("/api/analytics/summary", params={"agent_type": "once"}, headers=user)
        summary = r.json()
        assert (summary["total_tasks"], summary["completed_tasks"]) == (1, 1)
        assert summary["total_cost_usd"] == 0.25
        assert summary["input_tokens"] == 1000
        return {"replies": len(replies), "b_queued_behind_dead_transaction": b_queued}


def test_replica_killed_during_terminal_update_replies_once(infra: Infra) -> None:
    a, b = infra.replica("reply-a"), infra.replica("reply-b")
    try:
        FIGURES["killed_terminal_update"] = asyncio.run(_killed_terminal_update(infra, a, b))
    finally:
        a.kill()
        b.stop()
