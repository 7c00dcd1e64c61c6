"""Windows covered by whole blocks minus raw rows (`cover_window`): exact at any instant.

A partial block at a window's edge may be read as the whole block minus the tasks outside
the window. The unit tests check the cover counts every instant of the window once and
nothing else; the API tests put tasks on both sides of each edge, inside the same
15-minute, 1-hour and 4-hour blocks, and compare every figure with brute force.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.services.analytics.layout import GRAINS, HIST_GRAINS
from dashboard_api.services.analytics.window import cover_window
from dashboard_api.timeutil import format_ts
from tests.analytics import brute
from tests.analytics.brute import assert_close, assert_metrics
from tests.support.clock import FakeClock

Headers = Callable[[str], dict[str, str]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


def _coverage(start: datetime, end: datetime, **kwargs: Any) -> None:
    """Every elementary segment between the cover's edges is counted once inside the
    window and zero times outside it."""
    cover = cover_window(start, end, **kwargs)
    pieces: list[tuple[datetime, datetime, int]] = [(lo, hi, 1) for lo, hi in cover.add]
    pieces += [(lo, hi, -1) for lo, hi in cover.sub]
    for grain, bucket in cover.blocks:
        assert bucket % grain == 0
        lo = EPOCH + timedelta(seconds=bucket)
        pieces.append((lo, lo + timedelta(seconds=grain), 1))
    within = kwargs.get("within")
    if within is not None:
        for grain, bucket in cover.blocks:
            lo = EPOCH + timedelta(seconds=bucket)
            assert within[0] <= lo
            assert lo + timedelta(seconds=grain) <= within[1]
    for lo, hi, _ in pieces:
        assert lo < hi
    edges = sorted({start, end, *(p[0] for p in pieces), *(p[1] for p in pieces)})
    for a, b in itertools.pairwise(edges):
        count = sum(sign for lo, hi, sign in pieces if lo <= a and b <= hi)
        assert count == (1 if start <= a and b <= end else 0), (a, b)
    # A subtracted range is never longer than what it saves.
    for lo, hi in cover.sub:
        assert hi - lo < timedelta(seconds=kwargs.get("grains", GRAINS)[0])


@given(
    start=st.integers(-(10**13), 10**13),
    length=st.integers(1, 10**12),
    now_offset=st.one_of(st.none(), st.integers(-(10**11), 10**12)),
    hist=st.booleans(),
)
def test_cover_counts_every_instant_once(
    start: int, length: int, now_offset: int | None, hist: bool
) -> None:
    lo = EPOCH + start * US
    hi = lo + length * US
    now = None if now_offset is None else hi + now_offset * US
    _coverage(lo, hi, grains=HIST_GRAINS if hist else GRAINS, now=now)


@given(
    start=st.integers(0, 4 * 3600 * 10**6),
    length=st.integers(1, 4 * 3600 * 10**6),
    bucket_minutes=st.sampled_from((15, 30, 45, 60)),
)
def test_cover_keeps_blocks_inside_a_bucket(start: int, length: int, bucket_minutes: int) -> None:
    base = datetime(2025, 3, 9, 5, 0, tzinfo=UTC)
    lo = base + start * US
    hi = lo + length * US
    # A bucket whose edges are 15-minute aligned, holding the window.
    first = base + timedelta(minutes=(start // (15 * 60 * 10**6)) * 15)
    last = first + timedelta(minutes=bucket_minutes)
    while last < hi:
        last += timedelta(minutes=15)
    _coverage(lo, hi, now=hi, within=(first, last))


def test_windows_at_the_ends_of_the_calendar() -> None:
    top = datetime.max.replace(tzinfo=UTC)
    bottom = datetime.min.replace(tzinfo=UTC)
    for start, end in (
        (top - timedelta(minutes=20), top),
        (top - timedelta(days=3, seconds=7), top - timedelta(minutes=3)),
        (bottom, bottom + timedelta(minutes=20)),
        (bottom + timedelta(seconds=1), bottom + timedelta(days=2, seconds=5)),
    ):
        for now in (None, start, end):
            _coverage(start, end, now=now)
            _coverage(start, end, grains=HIST_GRAINS, now=now)


def test_a_window_ending_now_reads_no_raw_rows_at_its_end() -> None:
    now = datetime(2025, 6, 10, 10, 7, 30, 250_000, tzinfo=UTC)
    cover = cover_window(now - timedelta(days=30), now, HIST_GRAINS, now=now)
    # The end's 1-hour block is read whole, minus [now, 11:00), where nothing was created.
    assert (3600, 1749549600) in cover.blocks  # 2025-06-10T10:00Z
    # The start's 1-hour block is read whole minus its 7m30s before the window (not as
    # its 52m30s inside it): at most half of the finest block is ever read raw.
    start_block = datetime(2025, 5, 11, 10, 0, tzinfo=UTC)
    assert (3600, 1746957600) in cover.blocks  # 2025-05-11T10:00Z
    assert cover.sub == [
        (start_block, now - timedelta(days=30)),
        (now, datetime(2025, 6, 10, 11, 0, tzinfo=UTC)),
    ]
    assert cover.add == []
    for lo, hi in cover.sub:
        assert hi - lo <= timedelta(minutes=30) or lo == now


# --- through the API ---------------------------------------------------------------------

NOW = datetime(2025, 6, 10, 10, 7, 30, 250_000, tzinfo=UTC)
START = datetime(2025, 6, 1, 9, 52, 13, 500_000, tzinfo=UTC)
# Instants on both sides of each edge, inside the edges' 15-minute, 1-hour and 4-hour
# blocks.
CREATED = [
    START - timedelta(hours=1, minutes=50),
    START - timedelta(minutes=40),
    START - timedelta(minutes=3),
    START - US,
    START,
    START + US,
    START + timedelta(minutes=8),
    START + timedelta(hours=2),
    START + timedelta(days=3, hours=5),
    NOW - timedelta(hours=2),
    NOW - timedelta(minutes=7),
    NOW - US,
    NOW,  # back-filled at the window's end: outside it
    NOW + timedelta(minutes=5),
    NOW + timedelta(minutes=40),
    NOW + timedelta(hours=1, minutes=40),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at=NOW - timedelta(days=20))


async def test_edges_read_as_blocks_minus_rows_match_brute_force(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, clock: FakeClock
) -> None:
    agent = auth("agent")
    for i, created in enumerate(CREATED):
        body = {
            "agent_type": ("coder", "reviewer")[i % 2],
            "source": ("github", "slack", "api")[i % 3],
            "model": ("gpt-5", None, "claude-sonnet-4")[i % 3],
            "status": "running",
            "input_message": "x",
            "created_at": format_ts(created)[:-1] + f"{created.microsecond % 1000:03d}Z",
        }
        r = await client.post("/api/tasks", json=body, headers=agent)
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        clock.advance(1 + i * 37.5)
        r = await client.post(f"/api/tasks/{task_id}/output", json={"content": "x"}, headers=agent)
        assert r.status_code in (200, 201, 204), r.text
        clock.advance(3 + i * i * 11.25)
        status = ("completed", "failed", "completed", "cancelled")[i % 4]
        r = await client.patch(
            f"/api/tasks/{task_id}",
            json={"status": status, "cost_usd": 0.1 * (i + 1), "input_tokens": 10 * i},
            headers=agent,
        )
        assert r.status_code == 200, r.text
    clock.at = NOW
    raw = await brute.load_tasks(app)
    user = auth("user")
    for filters in ({}, {"agent_type": ["reviewer"]}, {"source": ["github", "api"]}):
        windows: tuple[dict[str, Any], ...] = ({"from": START.isoformat()}, {"to": NOW})
        for window in windows:
            params: dict[str, Any] = {"from": START.isoformat(), **window, **filters}
            if "to" in params:
                params["to"] = NOW.isoformat()
            rows = brute.in_window(
                raw, START, NOW, filters.get("agent_type", []), filters.get("source", [])
            )
            assert rows, "the window holds tasks"
            got = (await client.get("/api/analytics/summary", params=params, headers=user)).json()
            for key, value in brute.summary(rows, START, NOW).items():
                assert_close(got[key], value, f"summary.{key}")
            for tz, period in (("UTC", "hour"), ("Asia/Kolkata", "hour"), ("UTC", "day")):
                r = await client.get(
                    "/api/analytics/costs/histogram",
                    params={**params, "tz": tz, "period": period},
                    headers=user,
                )
                assert r.status_code == 200, r.text
                want = brute.histogram(rows, tz, period, START, NOW)
                got_buckets = r.json()["buckets"]
                assert [b["start"] for b in got_buckets] == [format_ts(b["start"]) for b in want]
                for g, e in zip(got_buckets, want, strict=True):
                    for key in ("tasks", "completed", "failed", "cost_usd", "input_tokens"):
                        assert_close(g[key], e[key], f"histogram {tz} {period}.{key}")
            got = (
                await client.get("/api/analytics/performance", params=params, headers=user)
            ).json()
            assert_metrics(got["overall"], brute.metrics(rows), "overall")
            for name, groups in (
                ("agent_type", got["by_agent_type"]),
                ("source", got["by_source"]),
                ("model", got["by_model"]),
            ):
                assert [g[name] or "" for g in groups] == sorted(
                    {getattr(t, name) or "" for t in rows}
                )
                for g in groups:
                    part = [t for t in rows if (getattr(t, name) or "") == (g[name] or "")]
                    assert_metrics(g, brute.metrics(part), f"{name}={g[name]}")
