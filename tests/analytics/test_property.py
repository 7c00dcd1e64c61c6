"""Random histories of task writes: every analytics figure equals brute force over raw rows,
and rollups rebuilt from scratch equal the incrementally maintained ones."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.jobs.reaper import reap_expired_leases
from dashboard_api.services.analytics.window import decompose, split_window
from dashboard_api.task_statuses import FAILURE_REASONS
from dashboard_api.timeutil import format_ts
from tests.analytics import brute
from tests.analytics.brute import assert_close, assert_metrics
from tests.support.clock import FakeClock

Headers = Callable[[str], dict[str, str]]

AGENTS = ("coder", "reviewer", "triage")
SOURCES = ("github", "slack", "api")
MODELS = (None, "claude-sonnet-4", "gpt-5", "no-such-model")
ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe")
# New York falls back on 2025-11-02 (a 25-hour day); Lord Howe moves by 30 minutes.
BASE = datetime(2025, 11, 1, 0, 0, tzinfo=UTC)
SPAN_US = 3 * 86400 * 1_000_000

tasks_st = st.lists(
    st.fixed_dictionaries(
        {
            "agent_type": st.sampled_from(AGENTS),
            "source": st.sampled_from(SOURCES),
            "model": st.sampled_from(MODELS),
            "status": st.sampled_from(("queued", "running")),
            "created_us": st.integers(0, SPAN_US),
        }
    ),
    min_size=1,
    max_size=8,
)
step_st = st.tuples(
    st.integers(0, 7),
    st.integers(0, 4000 * 1_000_000),  # clock advance, µs
    st.one_of(
        st.tuples(
            st.just("status"), st.sampled_from(("running", "completed", "failed", "cancelled"))
        ),
        st.tuples(st.just("tokens"), st.lists(st.integers(0, 2_000_000), min_size=4, max_size=4)),
        st.tuples(st.just("cost"), st.sampled_from((0.1, 0.2, 0.3, 1.234567, 0.0))),
        st.tuples(st.just("model"), st.sampled_from(MODELS)),
        st.tuples(st.just("output"), st.none()),
        st.tuples(st.just("cancel"), st.none()),
        st.tuples(st.just("claim"), st.sampled_from(AGENTS)),
        # The lease reaper fails the running tasks whose lease ran out by the clock
        # (300 s leases; steps advance the clock by up to 4,000 s).
        st.tuples(st.just("reap"), st.none()),
    ),
)
window_st = st.fixed_dictionaries(
    {
        "from_us": st.integers(-86400 * 1_000_000, SPAN_US),
        "len_us": st.integers(1, SPAN_US + 86400 * 1_000_000),
        "agent_type": st.lists(st.sampled_from(AGENTS), max_size=2, unique=True),
        "source": st.lists(st.sampled_from(SOURCES), max_size=2, unique=True),
        "failure_reason": st.lists(st.sampled_from(FAILURE_REASONS), max_size=2, unique=True),
        "tz": st.sampled_from(ZONES),
        "period": st.sampled_from(("hour", "day")),
    }
)


async def _apply(
    app: FastAPI,
    client: httpx.AsyncClient,
    clock: FakeClock,
    auth: Headers,
    ids: list[str],
    step: Any,
) -> None:
    idx, advance_us, (op, arg) = step
    clock.at += timedelta(microseconds=advance_us)
    task_id = ids[idx % len(ids)]
    agent = auth("agent")
    if op == "reap":
        await reap_expired_leases(app.state.ctx)
        return
    if op == "status":
        r = await client.patch(f"/api/tasks/{task_id}", json={"status": arg}, headers=agent)
    elif op == "tokens":
        names = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        body = dict(zip(names, arg, strict=True))
        r = await client.patch(f"/api/tasks/{task_id}", json=body, headers=agent)
    elif op == "cost":
        r = await client.patch(f"/api/tasks/{task_id}", json={"cost_usd": arg}, headers=agent)
    elif op == "model":
        r = await client.patch(f"/api/tasks/{task_id}", json={"model": arg}, headers=agent)
    elif op == "output":
        r = await client.post(f"/api/tasks/{task_id}/output", json={"content": "x"}, headers=agent)
    elif op == "cancel":
        r = await client.post(f"/api/tasks/{task_id}/cancel", headers=auth("user"))
    else:
        r = await client.post(
            "/api/tasks/claim", json={"agent_type": arg, "agent": "a-1"}, headers=agent
        )
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 204, 409), r.text


@pytest.mark.slow
@given(
    tasks=tasks_st,
    steps=st.lists(step_st, max_size=15),
    windows=st.lists(window_st, min_size=1, max_size=2),
)
async def test_figures_match_brute_force(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    clock: FakeClock,
    tasks: list[dict[str, Any]],
    steps: list[Any],
    windows: list[dict[str, Any]],
) -> None:
    ids: list[str] = []
    for spec in tasks:
        task_id = f"t-{uuid.uuid4().hex}"
        created = BASE + timedelta(microseconds=spec["created_us"])
        body = {
            "task_id": task_id,
            "agent_type": spec["agent_type"],
            "source": spec["source"],
            "status": spec["status"],
            "input_message": "work",
            "created_at": format_ts(created)[:-1] + f"{created.microsecond % 1000:03d}Z",
        }
        if spec["model"] is not None:
            body["model"] = spec["model"]
        r = await client.post("/api/tasks", json=body, headers=auth("agent"))
        assert r.status_code == 201, r.text
        ids.append(task_id)
    for step in steps:
        await _apply(app, client, clock, auth, ids, step)

    raw = await brute.load_tasks(app)
    everything = {"from_us": -86400 * 1_000_000, "len_us": SPAN_US + 2 * 86400 * 1_000_000}
    for w in [*windows, {**windows[0], **everything}]:
        start = BASE + timedelta(microseconds=w["from_us"])
        end = start + timedelta(microseconds=w["len_us"])
        params: dict[str, Any] = {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "agent_type": w["agent_type"],
            "source": w["source"],
            "failure_reason": w["failure_reason"],
        }
        rows = brute.in_window(raw, start, end, w["agent_type"], w["source"], w["failure_reason"])
        user = auth("user")

        got = (await client.get("/api/analytics/summary", params=params, headers=user)).json()
        for key, value in brute.summary(rows, start, end).items():
            assert_close(got[key], value, f"summary.{key}")
        # The task list, with the same filters and window, holds exactly these tasks.
        listed = await client.get(
            "/api/tasks",
            params={
                "created_after": params["from"],
                "created_before": params["to"],
                **{k: params[k] for k in ("agent_type", "source", "failure_reason")},
            },
            headers=user,
        )
        assert listed.status_code == 200, listed.text
        assert listed.json()["total"] == got["total_tasks"]

        r = await client.get(
            "/api/analytics/costs/histogram",
            params={**params, "tz": w["tz"], "period": w["period"]},
            headers=user,
        )
        assert r.status_code == 200, r.text
        got_buckets = r.json()["buckets"]
        want_buckets = brute.histogram(rows, w["tz"], w["period"], start, end)
        assert [b["start"] for b in got_buckets] == [format_ts(b["start"]) for b in want_buckets]
        for g, e in zip(got_buckets, want_buckets, strict=True):
            for key in (
                "tasks",
                "completed",
                "failed",
                "cost_usd",
                "input_tokens",
                "output_tokens",
            ):
                assert_close(g[key], e[key], f"histogram.{key}")

        got = (await client.get("/api/analytics/performance", params=params, headers=user)).json()
        assert_metrics(got["overall"], brute.metrics(rows), "overall")
        for name, groups in (
            ("agent_type", got["by_agent_type"]),
            ("source", got["by_source"]),
            ("model", got["by_model"]),
        ):
            keys = sorted({getattr(t, name) or "" for t in rows})
            assert [g[name] or "" for g in groups] == keys, name
            for g in groups:
                part = [t for t in rows if (getattr(t, name) or "") == (g[name] or "")]
                assert_metrics(g, brute.metrics(part), f"{name}={g[name]}")

    await brute.assert_rollups_equal_a_rebuild(app)


@given(start=st.integers(-(10**15), 10**16), length=st.integers(1, 10**16))
def test_split_window_covers_exactly_once(start: int, length: int) -> None:
    lo = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start)
    hi = lo + timedelta(microseconds=length)
    raw, blocks = split_window(lo, hi)
    pieces = [(a, b) for a, b in raw]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for grain, bucket in blocks:
        assert bucket % grain == 0
        a = epoch + timedelta(seconds=bucket)
        pieces.append((a, a + timedelta(seconds=grain)))
    pieces.sort()
    assert pieces[0][0] == lo
    assert pieces[-1][1] == hi
    for (_, b), (a, _) in itertools.pairwise(pieces):
        assert a == b
    assert len(blocks) <= 100 + length // (256 * 86400 * 10**6)
    assert decompose(0, 0) == []
