"""The lean path of the analytics reads (api/analytics.py, api/lean.py) answers exactly as
FastAPI's own handling does, for any query string: the same status, headers that matter
and body, errors included; and it does answer the plain requests."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from tests.support.lean_calls import record_lean_answers
from tests.tasks.test_lean_reads import ROWS, _both, _loaded, _query, _same

Headers = Callable[[str], dict[str, str]]

PATHS = ["/api/analytics/summary", "/api/analytics/costs/histogram", "/api/analytics/performance"]
# Values FastAPI takes and values it refuses, for each parameter of the three reads. `to`
# is always given first (a default `to` is the time of each request: two answers differ).
TO = "2026-01-06T00:00:00Z"
VALUES = {
    "from": [
        "2026-01-05T00:00:00Z",
        "2026-01-05T13:07:00+02:00",
        "2026-01-05 13:00",
        "2026-01-05",
        "2026-01-07T00:00:00Z",
        "0",
        "",
        "0001-01-01T00:00:00Z",
    ],
    "to": ["2026-01-06T00:00:00Z", "2026-01-05T12:00:00.5Z", "0001-01-01T00:00:00+05:00", "x"],
    "agent_type": ["coder", "coder,reviewer", " coder ", "", "a\x00b"],
    "source": ["slack", "api,slack", ","],
    "failure_reason": ["agent", "nope", ""],
    "period": ["hour", "day", "week", ""],
    "tz": ["UTC", "Asia/Kolkata", "America/New_York", "Mars/Olympus", "utc", ""],
    "other": ["1"],
}
PAIRS = st.sampled_from(sorted(VALUES)).flatmap(
    lambda key: st.tuples(st.just(key), st.sampled_from(VALUES[key]))
)


@given(path=st.sampled_from(PATHS), pairs=st.lists(PAIRS, max_size=4))
async def test_reads_answer_as_fastapi_does(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    pairs: list[tuple[str, str]],
) -> None:
    await _loaded(app)
    url = f"{path}?{_query([('to', TO), *pairs])}"
    a, b = await _both(client, monkeypatch, url, auth("user"))
    _same(a, b)
    assert a.status_code < 500


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}]
)
async def test_reads_refuse_callers_as_fastapi_does(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
) -> None:
    for path in PATHS:
        for h in (headers, auth("agent")):
            a, b = await _both(client, monkeypatch, f"{path}?to={TO}", h)
            _same(a, b)
            assert a.status_code in (401, 403)


async def test_lean_paths_answer_plain_requests(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean handlers do answer the plain requests (not FastAPI's handler behind them),
    with the figures of the tasks loaded."""
    await _loaded(app)
    answered = record_lean_answers(monkeypatch)
    window = f"from=2026-01-05T00:00:00Z&to={TO}"
    for path in PATHS:
        r = await client.get(f"{path}?{window}&agent_type=coder", headers=auth("user"))
        assert r.status_code == 200, r.text
    summary = await client.get(f"/api/analytics/summary?{window}", headers=auth("user"))
    assert summary.json()["total_tasks"] == len(ROWS)
    assert answered == [
        "_summary_lean",
        "_cost_histogram_lean",
        "_performance_lean",
        "_summary_lean",
    ]
