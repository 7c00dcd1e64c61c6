"""Budget periods in a time zone that changes offset: the edges are local midnights,
checked against an oracle that asks only "which local day/week/month is this instant in"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.app import create_app
from dashboard_api.services.budgets.periods import period_bounds
from tests.guards.conftest import QUIET_JOBS
from tests.support.env import Backend
from tests.support.tokens import make_token

PARIS = ZoneInfo("Europe/Paris")
US = timedelta(microseconds=1)


class FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def same_period(period: str, a: datetime, b: datetime, tz: ZoneInfo) -> bool:
    la, lb = a.astimezone(tz), b.astimezone(tz)
    if period == "day":
        return la.date() == lb.date()
    if period == "week":
        return la.isocalendar()[:2] == lb.isocalendar()[:2]
    return (la.year, la.month) == (lb.year, lb.month)


@given(
    at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)
    ),
    tz=st.sampled_from(
        ["Europe/Paris", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
    ),
    period=st.sampled_from(["day", "week", "month"]),
)
def test_bounds_hold_exactly_the_instants_of_the_local_period(
    at: datetime, tz: str, period: str
) -> None:
    zone = ZoneInfo(tz)
    start, end = period_bounds(period, zone, at)  # type: ignore[arg-type]
    assert start <= at < end
    assert same_period(period, start, at, zone)
    assert same_period(period, end - US, at, zone)
    assert not same_period(period, start - US, at, zone)
    assert not same_period(period, end, at, zone)


# Paris falls back on 2026-10-25 (a 25-hour day) and springs forward on 2026-03-29 (23 h).
CASES = [
    (
        "day",
        datetime(2026, 10, 25, 12, tzinfo=UTC),
        datetime(2026, 10, 24, 22, tzinfo=UTC),
        datetime(2026, 10, 25, 23, tzinfo=UTC),
    ),
    (
        "day",
        datetime(2026, 3, 29, 12, tzinfo=UTC),
        datetime(2026, 3, 28, 23, tzinfo=UTC),
        datetime(2026, 3, 29, 22, tzinfo=UTC),
    ),
    (
        "week",
        datetime(2026, 10, 25, 12, tzinfo=UTC),
        datetime(2026, 10, 18, 22, tzinfo=UTC),
        datetime(2026, 10, 25, 23, tzinfo=UTC),
    ),
    (
        "month",
        datetime(2026, 10, 25, 12, tzinfo=UTC),
        datetime(2026, 9, 30, 22, tzinfo=UTC),
        datetime(2026, 10, 31, 23, tzinfo=UTC),
    ),
    (
        "month",
        datetime(2026, 3, 29, 12, tzinfo=UTC),
        datetime(2026, 2, 28, 23, tzinfo=UTC),
        datetime(2026, 3, 31, 22, tzinfo=UTC),
    ),
]


@pytest.fixture
async def paris_client(
    backend: Backend, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], dict[str, str], FixedClock]]:
    clock = FixedClock(datetime(2026, 10, 25, 12, tzinfo=UTC))
    app = create_app(backend.settings(**QUIET_JOBS), clock=clock)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        admin = {"Authorization": f"Bearer {await make_token(app, role='admin', user_id='root')}"}
        agent = {"Authorization": f"Bearer {await make_token(app, role='agent', user_id='a')}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            yield c, admin, agent, clock


@pytest.mark.parametrize(("period", "now", "start", "end"), CASES)
async def test_spend_counts_tasks_between_local_midnights_across_dst(
    paris_client: tuple[httpx.AsyncClient, dict[str, str], dict[str, str], FixedClock],
    period: str,
    now: datetime,
    start: datetime,
    end: datetime,
) -> None:
    client, admin, agent, clock = paris_client
    clock.at = now
    # A task on each side of each edge, one microsecond apart, each with its own cost.
    edges = {"before_start": start - US, "at_start": start, "before_end": end - US, "at_end": end}
    costs = {"before_start": "1", "at_start": "2", "before_end": "4", "at_end": "8"}
    for name, at in edges.items():
        r = await client.post(
            "/api/tasks",
            json={
                "task_id": f"{period}-{name}",
                "agent_type": "coder",
                "input_message": "x",
                "user_id": "u1",
                "flow_id": "f1",
                "created_at": at.isoformat(),
            },
            headers=agent,
        )
        assert r.status_code == 201, r.text
        r = await client.patch(
            f"/api/tasks/{period}-{name}",
            json={"cost_usd": float(costs[name])},  # a JSON number, not a string
            headers=agent,
        )
        assert r.status_code == 200
    # Rollup scopes (fleet, agent type) and index-range scopes (user, flow): one answer.
    for scope in (
        {},
        {"agent_type": "coder"},
        {"user_id": "u1"},
        {"flow_id": "f1", "source": "api"},
    ):
        body = {
            "name": "p",
            "period": period,
            "tz": "Europe/Paris",
            "limit_usd": 100,
            "scope": scope,
        }
        r = await client.put("/api/budgets/paris", json=body, headers=admin)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["period_start"] == start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert got["period_end"] == end.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        want = sum(
            (Decimal(costs[n]) for n, at in edges.items() if same_period(period, at, now, PARIS)),
            Decimal(0),
        )
        assert want == 6  # at_start + before_end, by the oracle
        assert Decimal(str(got["spent_usd"])) == want


async def test_a_hold_ends_when_the_local_period_rolls_over(
    paris_client: tuple[httpx.AsyncClient, dict[str, str], dict[str, str], FixedClock],
) -> None:
    """Held tasks stay queued and are claimable at the next local midnight, with nothing
    run in between (the claim compares the hold's end with its own now)."""
    client, admin, agent, clock = paris_client
    clock.at = datetime(2026, 10, 25, 12, tzinfo=UTC)  # a 25-hour day in Paris
    body = {"name": "cap", "period": "day", "tz": "Europe/Paris", "limit_usd": 1, "action": "hold"}
    assert (await client.put("/api/budgets/cap", json=body, headers=admin)).status_code == 200
    for task_id in ("spender", "waiting"):
        r = await client.post(
            "/api/tasks",
            json={"task_id": task_id, "agent_type": "coder", "input_message": "x"},
            headers=agent,
        )
        assert r.status_code == 201
    claim = {"agent": "a1", "agent_type": "coder"}
    assert (await client.post("/api/tasks/claim", json=claim, headers=agent)).status_code == 200
    r = await client.patch("/api/tasks/spender", json={"cost_usd": 1}, headers=agent)
    assert r.status_code == 200
    assert (await client.post("/api/tasks/claim", json=claim, headers=agent)).status_code == 204
    clock.at = datetime(2026, 10, 25, 23, tzinfo=UTC) - US  # still the 25th in Paris
    assert (await client.post("/api/tasks/claim", json=claim, headers=agent)).status_code == 204
    clock.at = datetime(2026, 10, 25, 23, tzinfo=UTC)  # local midnight
    r = await client.post("/api/tasks/claim", json=claim, headers=agent)
    assert r.status_code == 200
    assert r.json()["task_id"] == "waiting"
