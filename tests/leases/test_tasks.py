"""Task leases (docs/api.md §13): taken on entering running, renewed lazily by every producer
call and by the assigned agent's heartbeat, failed by the reaper when they run out (with
the usual events, counted as failed), retries by hand and automatic ones."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.leases.conftest import Leased, ts_of
from tests.leases.helpers import append, claim, get, metric, register
from tests.support.clock import FakeClock
from tests.support.ws import ChannelListener


async def test_a_claimed_task_holds_a_lease_that_producer_calls_renew_lazily(
    leased: Leased, clock: FakeClock
) -> None:
    created = await register(leased)
    assert (created["lease_expires_at"], created["attempt"], created["max_attempts"]) == (
        None,
        1,
        1,
    )
    assert (created["retry_of"], created["retry_task_id"], created["failure_reason"]) == (
        None,
        None,
        None,
    )
    task = await claim(leased)
    task_id = task["task_id"]
    lease = ts_of(task["lease_expires_at"])
    assert lease == clock.now() + timedelta(seconds=300)

    async def lease_now() -> Any:
        return ts_of((await get(leased, task_id))["lease_expires_at"])

    assert (await append(leased, task_id)).status_code == 200  # first output
    clock.advance(100)
    for _ in range(5):  # more than half left: appends leave the lease alone
        assert (await append(leased, task_id)).status_code == 200
    assert await lease_now() == lease
    clock.advance(60)  # 140 s left: the next append renews
    assert (await append(leased, task_id)).status_code == 200
    assert await lease_now() == clock.now() + timedelta(seconds=300)

    clock.advance(160)
    r = await leased.client.patch(
        f"/api/tasks/{task_id}", json={"input_tokens": 5}, headers=leased.auth("agent")
    )
    assert ts_of(r.json()["lease_expires_at"]) == clock.now() + timedelta(seconds=300)

    clock.advance(160)
    r = await leased.client.post(f"/api/tasks/{task_id}/heartbeat", headers=leased.auth("agent"))
    assert r.status_code == 204
    assert await lease_now() == clock.now() + timedelta(seconds=300)

    clock.advance(160)  # the assigned agent's own heartbeat renews its tasks too
    r = await leased.client.post(
        "/api/agents/runner-1/heartbeat", json={}, headers=leased.auth("agent")
    )
    assert r.status_code == 204
    assert await lease_now() == clock.now() + timedelta(seconds=300)
    clock.advance(160)  # another agent's heartbeat does not
    await leased.client.post(
        "/api/agents/runner-2/heartbeat", json={}, headers=leased.auth("agent")
    )
    assert await lease_now() == clock.now() + timedelta(seconds=140)

    r = await leased.client.patch(
        f"/api/tasks/{task_id}", json={"status": "completed"}, headers=leased.auth("agent")
    )
    assert (r.json()["status"], r.json()["lease_expires_at"], r.json()["failure_reason"]) == (
        "completed",
        None,
        None,
    )
    clock.advance(1000)
    assert await leased.reap() == 0


async def test_lease_length_and_attempts_are_validated(leased: Leased, clock: FakeClock) -> None:
    task = await register(leased, status="running", lease_seconds=10, max_attempts=3)
    assert ts_of(task["lease_expires_at"]) == clock.now() + timedelta(seconds=10)
    assert task["max_attempts"] == 3
    for bad in (
        {"lease_seconds": 9},
        {"lease_seconds": 86_401},
        {"max_attempts": 0},
        {"max_attempts": 11},
    ):
        r = await leased.client.post(
            "/api/tasks",
            json={"agent_type": "coder", "input_message": "x", **bad},
            headers=leased.auth("agent"),
        )
        assert r.status_code == 422, bad
    r = await leased.client.post(
        "/api/tasks/claim",
        json={"agent_type": "coder", "agent": "a", "lease_seconds": 5},
        headers=leased.auth("agent"),
    )
    assert r.status_code == 422
    # A lease asked for at registration holds when the task is claimed later.
    queued = await register(leased, agent_type="slow", lease_seconds=60)
    claimed = await claim(leased, agent_type="slow")
    assert claimed["task_id"] == queued["task_id"]
    assert ts_of(claimed["lease_expires_at"]) == clock.now() + timedelta(seconds=60)
    # A heartbeat needs a running task.
    assert (
        await leased.client.post("/api/tasks/nope/heartbeat", headers=leased.auth("agent"))
    ).status_code == 404
    waiting = await register(leased)
    r = await leased.client.post(
        f"/api/tasks/{waiting['task_id']}/heartbeat", headers=leased.auth("agent")
    )
    assert (r.status_code, r.json()["current_status"]) == (409, "queued")
    r = await leased.client.post(
        f"/api/tasks/{waiting['task_id']}/heartbeat", headers=leased.auth("user")
    )
    assert r.status_code == 403


async def test_an_expired_task_fails_publishes_and_refuses_late_calls(
    leased: Leased, clock: FakeClock
) -> None:
    await register(leased)
    task = await claim(leased, lease_seconds=10)
    task_id = task["task_id"]
    assert (await append(leased, task_id, "hello\n")).status_code == 200
    clock.advance(9.999)
    assert await leased.reap() == 0
    clock.advance(0.002)
    async with ChannelListener(leased.app, "tasks") as listener:
        assert await leased.reap() == 1
        event = await listener.next()
    assert (event["type"], event["task_id"], event["status"]) == ("task_status", task_id, "failed")
    assert event["failure_reason"] == "lease_expired"
    failed = await get(leased, task_id)
    assert (failed["status"], failed["error"], failed["failure_reason"]) == (
        "failed",
        "lease expired",
        "lease_expired",
    )
    assert failed["lease_expires_at"] is None
    assert ts_of(failed["completed_at"]) == clock.now()
    log = (
        await leased.client.get(f"/api/tasks/{task_id}/logs/full", headers=leased.auth("user"))
    ).json()
    assert [e["status"] for e in log["events"]] == ["queued", "running", "failed"]
    assert log["output"] == "hello\n"  # what was acknowledged stays

    # Late producer calls: refused with the current status.
    r = await append(leased, task_id, "too late\n")
    assert (r.status_code, r.json()["current_status"]) == (409, "failed")
    r = await leased.client.patch(
        f"/api/tasks/{task_id}", json={"status": "completed"}, headers=leased.auth("agent")
    )
    assert (r.status_code, r.json()["current_status"]) == (409, "failed")
    r = await leased.client.post(f"/api/tasks/{task_id}/heartbeat", headers=leased.auth("agent"))
    assert (r.status_code, r.json()["current_status"]) == (409, "failed")
    # Repeating the status it has is the usual no-op.
    r = await leased.client.patch(
        f"/api/tasks/{task_id}", json={"status": "failed"}, headers=leased.auth("agent")
    )
    assert (r.status_code, r.json()["failure_reason"]) == (200, "lease_expired")

    # The list filters on the reason; analytics count it as failed; metrics count it.
    user = leased.auth("user")
    r = await leased.client.get(
        "/api/tasks", params={"failure_reason": "lease_expired"}, headers=user
    )
    assert [t["task_id"] for t in r.json()["items"]] == [task_id]
    assert r.json()["items"][0]["failure_reason"] == "lease_expired"
    r = await leased.client.get("/api/tasks", params={"failure_reason": "agent"}, headers=user)
    assert r.json()["total"] == 0
    r = await leased.client.get("/api/tasks", params={"failure_reason": "bored"}, headers=user)
    assert r.status_code == 422
    r = await leased.client.get(
        "/api/analytics/summary",
        params={"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        headers=user,
    )
    assert (r.json()["failed_tasks"], r.json()["running_tasks"]) == (1, 0)
    text = (await leased.client.get("/metrics")).text
    assert metric(text, "dashboard_leases_expired_total", agent_type="coder") == 1


async def test_a_failure_the_agent_reports_has_reason_agent(leased: Leased) -> None:
    await register(leased)
    task = await claim(leased)
    r = await leased.client.patch(
        f"/api/tasks/{task['task_id']}",
        json={"status": "failed", "error": "boom"},
        headers=leased.auth("agent"),
    )
    assert (r.json()["failure_reason"], r.json()["lease_expires_at"]) == ("agent", None)
    r = await leased.client.get(
        "/api/tasks", params={"failure_reason": "agent"}, headers=leased.auth("user")
    )
    assert [t["task_id"] for t in r.json()["items"]] == [task["task_id"]]


async def test_retry_is_idempotent_and_keeps_the_chain(leased: Leased) -> None:
    original = await register(
        leased,
        task_id="t-1",
        model="gpt-5",
        user_id="alice",
        flow_id="flow-1",
        source="github",
        metadata={"pr": 7},
    )
    user = leased.auth("user")
    r = await leased.client.post("/api/tasks/t-1/retry", headers=user)
    assert (r.status_code, r.json()["current_status"]) == (409, "queued")
    await claim(leased)
    r = await leased.client.post("/api/tasks/t-1/retry", headers=user)
    assert (r.status_code, r.json()["current_status"]) == (409, "running")
    await leased.client.patch(
        "/api/tasks/t-1", json={"status": "failed", "error": "x"}, headers=leased.auth("agent")
    )
    assert (
        await leased.client.post("/api/tasks/t-1/retry", headers=leased.auth("agent"))
    ).status_code == 403
    assert (await leased.client.post("/api/tasks/nope/retry", headers=user)).status_code == 404

    async with ChannelListener(leased.app, "tasks") as listener:
        first = await leased.client.post("/api/tasks/t-1/retry", headers=user)
        events = await listener.drain()
    assert first.status_code == 201, first.text
    retry = first.json()
    for field in (
        "agent_type",
        "input_message",
        "source",
        "model",
        "user_id",
        "conversation_id",
        "flow_id",
        "metadata",
    ):
        assert retry[field] == original[field], field
    assert (retry["status"], retry["retry_of"], retry["attempt"], retry["retry_task_id"]) == (
        "queued",
        "t-1",
        2,
        None,
    )
    assert retry["task_id"] != "t-1"
    assert {(e["task_id"], e["status"]) for e in events} == {
        (retry["task_id"], "queued"),
        ("t-1", "failed"),
    }
    again = await leased.client.post("/api/tasks/t-1/retry", headers=user)
    assert (again.status_code, again.json()["task_id"]) == (200, retry["task_id"])
    assert (await get(leased, "t-1"))["retry_task_id"] == retry["task_id"]
    # A retry of a retry continues the count.
    r = await leased.client.post(f"/api/tasks/{retry['task_id']}/cancel", headers=user)
    assert r.json()["status"] == "cancelled"
    third = (await leased.client.post(f"/api/tasks/{retry['task_id']}/retry", headers=user)).json()
    assert (third["attempt"], third["retry_of"]) == (3, retry["task_id"])
    # A completed task is not retried.
    done = await register(leased, agent_type="other", status="running")
    await leased.client.patch(
        f"/api/tasks/{done['task_id']}", json={"status": "completed"}, headers=leased.auth("agent")
    )
    r = await leased.client.post(f"/api/tasks/{done['task_id']}/retry", headers=user)
    assert (r.status_code, r.json()["current_status"]) == (409, "completed")
    text = (await leased.client.get("/metrics")).text
    assert metric(text, "dashboard_task_retries_created_total", trigger="manual") == 2


async def test_a_lease_expiry_with_attempts_left_is_retried_once(
    leased: Leased, clock: FakeClock
) -> None:
    first = await register(leased, max_attempts=2, lease_seconds=10)
    await claim(leased)
    clock.advance(11)
    assert await leased.reap() == 1
    failed = await get(leased, first["task_id"])
    assert failed["failure_reason"] == "lease_expired"
    retry = await get(leased, failed["retry_task_id"])
    assert (retry["status"], retry["attempt"], retry["max_attempts"], retry["retry_of"]) == (
        "queued",
        2,
        2,
        first["task_id"],
    )
    # The retry keeps the lease length asked for, and has no attempt left after it.
    claimed = await claim(leased)
    assert claimed["task_id"] == retry["task_id"]
    assert ts_of(claimed["lease_expires_at"]) == clock.now() + timedelta(seconds=10)
    clock.advance(11)
    assert await leased.reap() == 1
    assert (await get(leased, retry["task_id"]))["retry_task_id"] is None
    # A failure the agent reports is not retried automatically.
    reported = await register(leased, max_attempts=5)
    await claim(leased)
    await leased.client.patch(
        f"/api/tasks/{reported['task_id']}", json={"status": "failed"}, headers=leased.auth("agent")
    )
    assert (await get(leased, reported["task_id"]))["retry_task_id"] is None
    text = (await leased.client.get("/metrics")).text
    assert metric(text, "dashboard_task_retries_created_total", trigger="automatic") == 1
    assert metric(text, "dashboard_leases_expired_total", agent_type="coder") == 2


@pytest.mark.parametrize("call", ["patch", "append"])
async def test_expiry_racing_a_final_call_never_contradicts_an_acknowledgement(
    leased: Leased, clock: FakeClock, call: str
) -> None:
    """The reaper and a producer call arriving just after the lease ran out, at once,
    many times: exactly one wins. A 2xx means the call took effect and the task was not
    failed by its lease; a 409 means the reaper had failed it and the call left nothing."""
    import asyncio
    import random

    rng = random.Random(17)
    agent = leased.auth("agent")
    outcomes = {"call": 0, "reaper": 0}
    for i in range(30):
        task = await register(
            leased, task_id=f"race-{call}-{i}", status="running", lease_seconds=10
        )
        task_id = task["task_id"]
        for n in range(2):  # the first append goes the long way, then the short one
            assert (await append(leased, task_id, f"warm {n}\n")).status_code == 200
        clock.advance(10.5)

        async def producer(task_id: str = task_id) -> Any:
            await asyncio.sleep(rng.uniform(0, 0.003))
            if call == "patch":
                return await leased.client.patch(
                    f"/api/tasks/{task_id}",
                    json={"status": "completed", "result": "ok"},
                    headers=agent,
                )
            return await append(leased, task_id, "final\n")

        async def reaper() -> int:
            await asyncio.sleep(rng.uniform(0, 0.003))
            return await leased.reap()

        response, reaped = await asyncio.gather(producer(), reaper())
        after = await get(leased, task_id)
        log = (
            await leased.client.get(f"/api/tasks/{task_id}/logs/full", headers=leased.auth("user"))
        ).json()
        if response.status_code == 200:
            outcomes["call"] += 1
            assert after["failure_reason"] is None
            assert after["status"] == ("completed" if call == "patch" else "running")
            if call == "append":
                assert log["output"].endswith("final\n")
                assert response.json()["last_seq"] == log["last_seq"] == 3
                # The append renewed the lease: the reaper does not fail it later either.
                assert await leased.reap() == 0
                r = await leased.client.patch(
                    f"/api/tasks/{task_id}", json={"status": "completed"}, headers=agent
                )
                assert r.status_code == 200  # out of the next rounds' way
        else:
            outcomes["reaper"] += 1
            assert response.status_code == 409, response.text
            assert response.json()["current_status"] == "failed"
            assert reaped == 1
            assert (after["status"], after["failure_reason"]) == ("failed", "lease_expired")
            assert "final" not in log["output"]
        assert [e["status"] for e in log["events"]].count("failed") == (
            0 if response.status_code == 200 else 1
        )
    # Both sides won some rounds (the race was real), none was contradicted.
    assert outcomes["call"] + outcomes["reaper"] == 30


async def test_concurrent_retry_requests_make_one_retry(leased: Leased) -> None:
    import asyncio

    await register(leased, task_id="c-1", status="running")
    await leased.client.patch(
        "/api/tasks/c-1", json={"status": "failed"}, headers=leased.auth("agent")
    )
    answers = await asyncio.gather(
        *(leased.client.post("/api/tasks/c-1/retry", headers=leased.auth("user")) for _ in range(8))
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 7 + [201], [r.text for r in answers]
    assert len({r.json()["task_id"] for r in answers}) == 1
    r = await leased.client.get(
        "/api/tasks", params={"agent_type": "coder"}, headers=leased.auth("user")
    )
    assert r.json()["total"] == 2


# PostgreSQL + Redis only: the Redis ingress needs Redis.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_redis_ingress_messages_renew_the_lease(
    leased: Leased, clock: FakeClock, backend: Any
) -> None:
    """Producer messages on Redis go through the same service calls as HTTP: they renew."""
    import asyncio

    import orjson
    import redis.asyncio as aioredis

    from tests.support.env import REDIS_URL

    task = await register(leased, task_id="via-redis", status="running")
    assert (await append(leased, "via-redis", "first\n")).status_code == 200
    redis = aioredis.Redis.from_url(REDIS_URL)
    prefix = leased.app.state.ctx.settings.redis_ingress_prefix
    try:
        for kind, body, field, want in (
            ("output", {"content": "from redis\n", "message_id": "m-1"}, "output_seq", 2),
            ("status", {"input_tokens": 3}, "input_tokens", 3),
        ):
            clock.advance(200)  # 100 s left of 300: the next producer call renews
            async with asyncio.timeout(20):
                while (await get(leased, "via-redis"))[field] != want:
                    await redis.publish(f"{prefix}task:via-redis:{kind}", orjson.dumps(body))
                    await asyncio.sleep(0.2)
            current = await get(leased, "via-redis")
            assert ts_of(current["lease_expires_at"]) == clock.now() + timedelta(seconds=300)
    finally:
        await redis.aclose()
    assert task["status"] == "running"
