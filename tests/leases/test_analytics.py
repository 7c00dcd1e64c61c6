"""Expired tasks in analytics (docs/api.md §5, §13): they count as failed, and every analytics
endpoint filters by `failure_reason` with exactly the tasks the task list gives."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dashboard_api.timeutil import format_ts
from tests.leases.conftest import Leased
from tests.leases.helpers import register
from tests.support.clock import FakeClock


async def _get(leased: Leased, path: str, **params: Any) -> dict[str, Any]:
    r = await leased.client.get(path, params=params, headers=leased.auth("user"))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_analytics_filter_by_failure_reason_as_the_task_list_does(
    leased: Leased, clock: FakeClock
) -> None:
    start = clock.at - timedelta(hours=1)
    lost = await register(leased, status="running", lease_seconds=10, max_attempts=2)
    reported = await register(leased, status="running", agent_type="reviewer", model="gpt-5")
    await register(leased, source="github")  # queued: no reason
    r = await leased.client.patch(
        f"/api/tasks/{reported['task_id']}",
        json={"status": "failed", "cost_usd": 0.25, "input_tokens": 7},
        headers=leased.auth("agent"),
    )
    assert r.status_code == 200, r.text
    clock.advance(11)
    assert await leased.reap() == 1  # `lost` fails and its retry is queued
    window = {"from": format_ts(start), "to": format_ts(clock.at + timedelta(hours=1))}
    listed = {
        reason: await _get(leased, "/api/tasks", failure_reason=reason)
        for reason in ("lease_expired", "agent")
    }
    assert [t["task_id"] for t in listed["lease_expired"]["items"]] == [lost["task_id"]]
    assert [t["task_id"] for t in listed["agent"]["items"]] == [reported["task_id"]]

    everything = await _get(leased, "/api/analytics/summary", **window)
    assert (everything["total_tasks"], everything["failed_tasks"]) == (4, 2)
    assert everything["failed_by_reason"] == {"lease_expired": 1, "agent": 1}

    expired = await _get(leased, "/api/analytics/summary", **window, failure_reason="lease_expired")
    assert (expired["total_tasks"], expired["failed_tasks"], expired["queued_tasks"]) == (1, 1, 0)
    assert expired["failed_by_reason"] == {"lease_expired": 1, "agent": 0}
    assert expired["success_rate"] == 0.0

    by_agent = await _get(
        leased, "/api/analytics/summary", **window, failure_reason="agent", agent_type="reviewer"
    )
    assert (by_agent["total_tasks"], by_agent["total_cost_usd"], by_agent["input_tokens"]) == (
        1,
        0.25,
        7,
    )
    both = await _get(
        leased, "/api/analytics/summary", **window, failure_reason="agent,lease_expired"
    )
    assert both["total_tasks"] == 2
    none = await _get(
        leased, "/api/analytics/summary", **window, failure_reason="agent", source="github"
    )
    assert none["total_tasks"] == 0

    histogram = await _get(
        leased, "/api/analytics/costs/histogram", **window, period="hour", failure_reason="agent"
    )
    assert sum(b["tasks"] for b in histogram["buckets"]) == 1
    assert sum(b["failed"] for b in histogram["buckets"]) == 1

    performance = await _get(
        leased, "/api/analytics/performance", **window, failure_reason="lease_expired"
    )
    assert (performance["overall"]["tasks"], performance["overall"]["failed"]) == (1, 1)
    assert [g["agent_type"] for g in performance["by_agent_type"]] == ["coder"]
    assert [g["model"] for g in performance["by_model"]] == [None]
    reported_perf = await _get(
        leased, "/api/analytics/performance", **window, failure_reason="agent"
    )
    assert [g["model"] for g in reported_perf["by_model"]] == ["gpt-5"]
    assert reported_perf["overall"]["p50_duration_seconds"] is not None


async def test_an_unknown_failure_reason_is_422(leased: Leased) -> None:
    for path in (
        "/api/analytics/summary",
        "/api/analytics/costs/histogram",
        "/api/analytics/performance",
    ):
        r = await leased.client.get(
            path, params={"failure_reason": "crashed"}, headers=leased.auth("user")
        )
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
