"""Histogram buckets in IANA time zones: DST days of 23 and 25 hours, 30/45-minute offsets,
window edges at any instant, and the 422s."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.clock import FakeClock

Headers = Callable[[str], dict[str, str]]


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def register(
    client: httpx.AsyncClient, auth: Headers, created: datetime, **extra: Any
) -> None:
    body = {"agent_type": "coder", "input_message": "x", "created_at": iso(created), **extra}
    r = await client.post("/api/tasks", json=body, headers=auth("agent"))
    assert r.status_code == 201, r.text


async def histogram(client: httpx.AsyncClient, auth: Headers, **params: Any) -> httpx.Response:
    return await client.get("/api/analytics/costs/histogram", params=params, headers=auth("user"))


async def test_new_york_spring_forward_has_23_hours(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    await register(client, auth, z("2025-03-09T06:59:59.999999Z"))  # 01:59:59 EST
    await register(client, auth, z("2025-03-09T07:00:00Z"))  # 03:00 EDT
    r = await histogram(
        client, auth, **{"from": "2025-03-09T05:00:00Z", "to": "2025-03-10T04:00:00Z"},
        period="hour", tz="America/New_York",
    )  # fmt: skip
    assert r.status_code == 200, r.text
    buckets = r.json()["buckets"]
    assert len(buckets) == 23
    starts = [b["start"] for b in buckets]
    assert starts[:3] == [
        "2025-03-09T05:00:00.000Z",
        "2025-03-09T06:00:00.000Z",
        "2025-03-09T07:00:00.000Z",
    ]
    assert [b["tasks"] for b in buckets[:3]] == [0, 1, 1]
    day = await histogram(
        client, auth, **{"from": "2025-03-08T12:00:00Z", "to": "2025-03-11T12:00:00Z"},
        tz="America/New_York",
    )  # fmt: skip
    assert [b["start"] for b in day.json()["buckets"]] == [
        "2025-03-08T05:00:00.000Z",
        "2025-03-09T05:00:00.000Z",
        "2025-03-10T04:00:00.000Z",
        "2025-03-11T04:00:00.000Z",
    ]
    assert [b["tasks"] for b in day.json()["buckets"]] == [0, 2, 0, 0]


async def test_new_york_fall_back_has_25_hours(client: httpx.AsyncClient, auth: Headers) -> None:
    await register(client, auth, z("2025-11-02T05:30:00Z"))  # 01:30 EDT
    await register(client, auth, z("2025-11-02T06:30:00Z"))  # 01:30 EST
    await register(client, auth, z("2025-11-02T06:30:00Z"), model="gpt-5")
    r = await histogram(
        client, auth, **{"from": "2025-11-02T04:00:00Z", "to": "2025-11-03T05:00:00Z"},
        period="hour", tz="America/New_York",
    )  # fmt: skip
    buckets = r.json()["buckets"]
    assert len(buckets) == 25
    assert [b["tasks"] for b in buckets[:4]] == [0, 1, 2, 0]
    day = await histogram(
        client, auth, **{"from": "2025-11-02T04:00:00Z", "to": "2025-11-03T05:00:00Z"},
        tz="America/New_York",
    )  # fmt: skip
    assert [(b["start"], b["tasks"]) for b in day.json()["buckets"]] == [
        ("2025-11-02T04:00:00.000Z", 3)
    ]


@pytest.mark.parametrize(
    ("tz", "day_start", "hour_minute"),
    [
        ("Asia/Kolkata", "2025-06-09T18:30:00.000Z", 30),
        ("Asia/Kathmandu", "2025-06-09T18:15:00.000Z", 15),
    ],
)
async def test_sub_hour_offsets(
    client: httpx.AsyncClient, auth: Headers, tz: str, day_start: str, hour_minute: int
) -> None:
    # Local midnight of 2025-06-10 and the last instant before it.
    midnight = z(day_start) + timedelta(days=1)
    await register(client, auth, midnight - timedelta(microseconds=1))
    await register(client, auth, midnight)
    await register(client, auth, midnight + timedelta(minutes=59, seconds=59))
    window = {"from": "2025-06-10T00:00:00Z", "to": "2025-06-11T12:00:00Z"}
    day = (await histogram(client, auth, **window, tz=tz)).json()["buckets"]
    assert [b["start"] for b in day] == [
        day_start,
        iso(midnight).replace(":00Z", ":00.000Z"),
    ]
    assert [b["tasks"] for b in day] == [1, 2]
    hours = (await histogram(client, auth, **window, tz=tz, period="hour")).json()["buckets"]
    assert all(b["start"][14:16] == f"{hour_minute:02d}" for b in hours)
    by_start = {b["start"]: b["tasks"] for b in hours}
    assert by_start[iso(midnight).replace(":00Z", ":00.000Z")] == 2


async def test_window_edges_are_exact_instants(client: httpx.AsyncClient, auth: Headers) -> None:
    lo = z("2025-06-10T10:07:13.250001Z")
    hi = z("2025-06-10T10:07:14.000000Z")
    for at in (lo - timedelta(microseconds=1), lo, hi - timedelta(microseconds=1), hi):
        await register(client, auth, at)
    params = {"from": iso(lo), "to": iso(hi)}
    s = (await client.get("/api/analytics/summary", params=params, headers=auth("user"))).json()
    assert s["total_tasks"] == 2
    assert s["from"] == "2025-06-10T10:07:13.250Z"
    h = (await histogram(client, auth, **params, period="hour")).json()["buckets"]
    assert [(b["start"], b["tasks"]) for b in h] == [("2025-06-10T10:00:00.000Z", 2)]


async def test_bucket_limit(client: httpx.AsyncClient, auth: Headers) -> None:
    start = z("2025-01-01T00:00:00Z")
    ok = await histogram(
        client,
        auth,
        **{"from": iso(start), "to": iso(start + timedelta(hours=2000))},
        period="hour",
    )
    assert ok.status_code == 200
    assert len(ok.json()["buckets"]) == 2000
    end = start + timedelta(hours=2000, microseconds=1)
    too_many = await histogram(
        client, auth, **{"from": iso(start), "to": iso(end)},
        period="hour",
    )  # fmt: skip
    assert too_many.status_code == 422
    assert too_many.headers["content-type"].startswith("application/problem+json")
    years = await histogram(
        client, auth, **{"from": "2000-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"}
    )
    assert years.status_code == 422


@pytest.mark.parametrize(
    "params",
    [
        {"tz": "Mars/Olympus_Mons"},
        {"tz": "../../etc/passwd"},
        {"tz": ""},
        {"period": "week"},
        {"from": "2025-01-02T00:00:00Z", "to": "2025-01-01T00:00:00Z"},
        {"from": "2025-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"},
        {"from": "yesterday"},
    ],
)
async def test_bad_queries_are_422(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, str]
) -> None:
    r = await histogram(client, auth, **params)
    assert r.status_code == 422, r.text
    assert r.json()["status"] == 422


async def test_roles_and_default_window(
    client: httpx.AsyncClient, auth: Headers, clock: FakeClock
) -> None:
    for path in (
        "/api/analytics/summary",
        "/api/analytics/costs/histogram",
        "/api/analytics/performance",
    ):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=auth("agent"))).status_code == 403
        assert (await client.get(path, headers=auth("admin"))).status_code == 200
    await register(client, auth, clock.now() - timedelta(days=29, hours=23))
    await register(client, auth, clock.now() - timedelta(days=30, seconds=1))
    s = (await client.get("/api/analytics/summary", headers=auth("user"))).json()
    assert s["to"] == iso(clock.now()).replace(":00Z", ":00.000Z")
    assert s["total_tasks"] == 1
    assert s["tasks_per_day"] == pytest.approx(1 / 30)
    h = (await client.get("/api/analytics/costs/histogram", headers=auth("user"))).json()
    assert (len(h["buckets"]), h["tz"], h["period"]) == (31, "UTC", "day")
    assert sum(b["tasks"] for b in h["buckets"]) == 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (
            "/api/analytics/costs/histogram",
            {
                "from": "9999-12-30T00:00:00Z",
                "to": "9999-12-31T23:00:00Z",
                "tz": "Pacific/Kiritimati",
            },
        ),
        (
            "/api/analytics/costs/histogram",
            {
                "from": "0001-01-01T00:00:00Z",
                "to": "0001-01-02T00:00:00Z",
                "tz": "America/New_York",
            },
        ),
        ("/api/analytics/summary", {"to": "0001-01-02T00:00:00Z"}),
        (
            "/api/analytics/performance",
            {"from": "0001-01-01T00:00:00Z", "to": "0001-01-01T00:00:01Z"},
        ),
    ],
)
async def test_calendar_limits_are_not_5xx(
    client: httpx.AsyncClient, auth: Headers, path: str, params: dict[str, str]
) -> None:
    r = await client.get(path, params=params, headers=auth("user"))
    assert r.status_code in (200, 422), r.text
