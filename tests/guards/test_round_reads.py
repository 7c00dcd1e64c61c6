"""A round of alert rules reads every figure at once (services/alerts/reads.py): the
values equal brute force over the raw tasks for any windows and scopes, and the number
of statements a round runs does not grow with the number of rules."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.app import create_app
from dashboard_api.db.models.guards import AlertRule
from dashboard_api.services.alerts.evaluate import evaluate_rules
from dashboard_api.services.alerts.kinds import measure
from dashboard_api.services.alerts.reads import read_round
from dashboard_api.services.analytics.fold import fold_pending
from dashboard_api.services.analytics.layout import bin_value, value_bin
from dashboard_api.settings import Settings
from dashboard_api.timeutil import format_ts
from tests.analytics import brute
from tests.support.clock import FakeClock
from tests.support.statements import listening

Headers = Callable[[str], dict[str, str]]

AGENTS = ("coder", "reviewer")
SOURCES = ("github", "api")
NOW = datetime(2025, 11, 2, 10, 7, 30, 250_000, tzinfo=UTC)
SPAN_US = 26 * 3600 * 1_000_000  # tasks from 26 hours before NOW to 10 minutes after


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at=NOW - timedelta(hours=2))


@pytest.fixture
async def app(settings: Settings, clock: FakeClock) -> AsyncIterator[FastAPI]:
    """The app on a clock the test moves (durations are known), without the lease reaper
    (the clock moves by hours)."""
    quiet = settings.model_copy(update={"lease_reap_interval_seconds": 0})
    application = create_app(quiet, clock=clock)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


def _rule(i: int, kind: str, minutes: int, agent_type: str | None, source: str | None) -> AlertRule:
    return AlertRule(
        rule_id=f"r{i}",
        name=f"r{i}",
        kind=kind,
        scope_agent_type=agent_type,
        scope_source=source,
        window_minutes=minutes,
        threshold=1e9,
        channels=[],
        enabled=True,
    )


def _expected(rule: AlertRule, tasks: list[Any]) -> float:
    """The rule's value by brute force over the raw tasks (docs/api.md §15)."""
    start = NOW - timedelta(minutes=rule.window_minutes)
    rows = brute.in_window(
        tasks,
        start,
        NOW,
        [rule.scope_agent_type] if rule.scope_agent_type else [],
        [rule.scope_source] if rule.scope_source else [],
    )
    if rule.kind == "cost_usd":
        return brute.usd(sum(t.cost_micros for t in rows))
    if rule.kind == "failure_rate":
        ended = [t for t in rows if t.status in ("completed", "failed", "cancelled")]
        failed = sum(t.status == "failed" for t in ended)
        return failed / len(ended) if ended else 0.0
    durations = sorted(t.duration_us for t in rows if t.duration_us is not None)
    if not durations:
        return 0.0
    # Nearest rank over the log bins (their representative value, within 2 %).
    rank = durations[max(1, math.ceil(0.95 * len(durations))) - 1]
    return bin_value(value_bin(rank)) / 1_000_000


tasks_st = st.lists(
    st.fixed_dictionaries(
        {
            "agent_type": st.sampled_from(AGENTS),
            "source": st.sampled_from(SOURCES),
            "created_us": st.integers(0, SPAN_US),
            "status": st.sampled_from(("queued", "running", "completed", "failed", "cancelled")),
            "run_us": st.integers(0, 3600 * 1_000_000),
            "cost": st.sampled_from((0.0, 0.1, 1.234567, 7.5)),
        }
    ),
    min_size=1,
    max_size=10,
)
rules_st = st.lists(
    st.tuples(
        st.sampled_from(("failure_rate", "cost_usd", "duration_p95_seconds")),
        st.one_of(st.sampled_from((1, 5, 15, 60, 240, 1440)), st.integers(1, 1440)),
        st.sampled_from((None, *AGENTS)),
        st.sampled_from((None, *SOURCES)),
    ),
    min_size=1,
    max_size=12,
)


async def _add(
    client: httpx.AsyncClient, clock: FakeClock, agent: dict[str, str], spec: Any
) -> None:
    created = NOW - timedelta(microseconds=SPAN_US - 600 * 1_000_000 - spec["created_us"])
    body = {
        "agent_type": spec["agent_type"],
        "source": spec["source"],
        "status": "running" if spec["status"] != "queued" else "queued",
        "input_message": "x",
        "created_at": format_ts(created)[:-1] + f"{created.microsecond % 1000:03d}Z",
    }
    r = await client.post("/api/tasks", json=body, headers=agent)
    assert r.status_code == 201, r.text
    if spec["status"] in ("queued", "running"):
        return
    clock.at += timedelta(microseconds=spec["run_us"])
    r = await client.patch(
        f"/api/tasks/{r.json()['task_id']}",
        json={"status": spec["status"], "cost_usd": spec["cost"]},
        headers=agent,
    )
    assert r.status_code == 200, r.text


@pytest.mark.slow
@given(tasks=tasks_st, specs=rules_st)
async def test_round_figures_match_brute_force(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    clock: FakeClock,
    tasks: list[dict[str, Any]],
    specs: list[tuple[str, int, str | None, str | None]],
) -> None:
    """Every window (whole blocks plus or minus edge tasks, shared by the rules over it)
    and every scope (summed from the per-(agent type, source) figures) measures what the
    raw tasks say."""
    clock.at = NOW - timedelta(hours=2)
    for spec in tasks:
        await _add(client, clock, auth("agent"), spec)
    ctx = app.state.ctx
    await fold_pending(ctx.db)
    rules = [_rule(i, *spec) for i, spec in enumerate(specs)]
    async with ctx.db.read_statements() as session:
        reads = await read_round(session, rules, now=NOW, settings=ctx.settings)
    raw = await brute.load_tasks(app)
    for rule in rules:
        m = measure(rule, reads, ctx.settings)
        assert m is not None
        want = _expected(rule, raw)
        where = (rule.kind, rule.window_minutes, rule.scope_agent_type, rule.scope_source)
        assert math.isclose(m.value, want, rel_tol=1e-9, abs_tol=1e-9), (where, m, want)


@contextmanager
def _statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the current task runs meanwhile on the app's database (not
    those of the app's periodic jobs, nor SQLite's BEGIN)."""
    seen: list[str] = []
    task = asyncio.current_task()

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if asyncio.current_task() is task and statement != "BEGIN":
            seen.append(statement)

    with listening(app.state.ctx.db.engines, note):
        yield seen


async def _put_rules(
    client: httpx.AsyncClient, admin: dict[str, str], prefix: str, windows: tuple[int, ...]
) -> None:
    kinds = (
        "failure_rate", "cost_usd", "duration_p95_seconds", "agent_offline", "lease_expired",
        "webhook_signature_failures", "oauth_expiring", "index_job_failed", "budget",
    )  # fmt: skip
    scopes: list[dict[str, str]] = [{}, {"agent_type": "coder"}, {"source": "api"}]
    scopes.append({"agent_type": "reviewer", "source": "github"})
    i = 0
    for kind in kinds:
        for minutes in windows:
            for scope in scopes:
                body = {
                    "name": f"{prefix}{i}",
                    "kind": kind,
                    "window_minutes": minutes,
                    "threshold": 1e9,
                    "scope": scope,
                }
                r = await client.put(f"/api/alerts/rules/{prefix}{i}", json=body, headers=admin)
                assert r.status_code == 200, r.text
                i += 1


async def test_statements_per_round_do_not_grow_with_the_rules(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, clock: FakeClock
) -> None:
    """Four statements a round: the rules with their open alerts (and whether writes wait
    to be folded), the counters of every window, the percentiles of every window, and
    every count, OAuth installation and budget. 108 rules of every kind over three
    windows and four scopes cost the same as 216 over six."""
    clock.at = NOW
    for i, status in enumerate(("completed", "failed")):
        spec = {"agent_type": AGENTS[i], "source": SOURCES[i], "created_us": SPAN_US - 10**9}
        await _add(
            client, clock, auth("agent"), {**spec, "status": status, "run_us": 10**6, "cost": 1}
        )
    await _put_rules(client, auth("admin"), "a", (5, 60, 1440))
    ctx = app.state.ctx
    await fold_pending(ctx.db)
    with _statements(app) as seen:
        assert await evaluate_rules(ctx.db, ctx.settings, now=clock.now()) == []
    assert len(seen) == 4, seen
    await _put_rules(client, auth("admin"), "b", (1, 15, 240))
    with _statements(app) as seen:
        assert await evaluate_rules(ctx.db, ctx.settings, now=clock.now()) == []
    assert len(seen) == 4, seen
