"""The direct JSON writers of task answers produce exactly the Pydantic models' documents."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.money import micros_to_usd
from dashboard_api.schemas.common import Page
from dashboard_api.schemas.tasks import (
    SUMMARY_COLUMNS,
    FullLog,
    TaskPublic,
    TaskSummary,
    task_public,
    task_summary,
)
from dashboard_api.schemas.tasks_json import public_doc, summary_from_row, ts, usd
from dashboard_api.timeutil import format_ts
from tests.support.tasks import Row, load_rows

Headers = Callable[[str], dict[str, str]]

MICROS = st.integers(0, 2**62)
TEXT = st.text(max_size=30)
OPT_TEXT = st.none() | TEXT
# Aware datetimes in UTC (what the database returns) and in other offsets, with the
# early years where strftime and isoformat disagree on padding.
TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 1, 1),
    timezones=st.sampled_from(
        [timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(0), "Z")]
    ),
)


@given(TIMES)
def test_timestamps_match_the_reference(value: datetime) -> None:
    assert ts(value) == format_ts(value)


@given(MICROS)
def test_dollars_match_the_reference(micros: int) -> None:
    assert usd(micros) == micros_to_usd(micros)


@st.composite
def task_rows(draw: st.DrawFn) -> SimpleNamespace:
    return SimpleNamespace(
        task_id=draw(st.text(min_size=1, max_size=20)),
        status=draw(st.sampled_from(["queued", "running", "completed", "failed", "cancelled"])),
        agent_type=draw(TEXT),
        assigned_agent=draw(OPT_TEXT),
        source=draw(TEXT),
        input_message=draw(st.text(max_size=300)),
        result=draw(OPT_TEXT),
        error=draw(OPT_TEXT),
        user_id=draw(OPT_TEXT),
        conversation_id=draw(OPT_TEXT),
        parent_task_id=draw(OPT_TEXT),
        flow_id=draw(OPT_TEXT),
        model=draw(OPT_TEXT),
        cost_micros=draw(MICROS),
        cost_reported=draw(st.booleans()),
        input_tokens=draw(MICROS),
        output_tokens=draw(MICROS),
        cache_read_tokens=draw(MICROS),
        cache_write_tokens=draw(MICROS),
        duration_us=draw(st.none() | MICROS),
        created_at=draw(TIMES),
        started_at=draw(st.none() | TIMES),
        completed_at=draw(st.none() | TIMES),
        updated_at=draw(TIMES),
        cancel_requested=draw(st.booleans()),
        metadata_=draw(st.dictionaries(TEXT, st.none() | st.integers() | TEXT, max_size=3)),
        output_seq=draw(st.integers(0, 2**31 - 1)),
        output_truncated=draw(st.booleans()),
        lease_expires_at=draw(st.none() | TIMES),
        failure_reason=draw(st.sampled_from([None, "lease_expired", "agent"])),
        attempt=draw(st.integers(1, 10)),
        max_attempts=draw(st.integers(1, 10)),
        retry_of=draw(OPT_TEXT),
        retry_task_id=draw(OPT_TEXT),
    )


def _reference(model: Any) -> Any:
    """The document FastAPI would have written for a model (key order included)."""
    return json.loads(model.model_dump_json())


@given(task_rows())
def test_summary_rows_match_the_model(t: SimpleNamespace) -> None:
    preview = t.input_message[:200]
    row = (*(getattr(t, c) for c in SUMMARY_COLUMNS), preview, t.error is not None)
    doc = summary_from_row(row)
    expected = _reference(task_summary(t, input_preview=preview, has_error=t.error is not None))
    assert list(doc) == list(expected)
    assert orjson.loads(orjson.dumps(doc)) == expected


@given(task_rows())
def test_public_documents_match_the_model(t: SimpleNamespace) -> None:
    doc = public_doc(t)
    expected = _reference(task_public(t))
    assert list(doc) == list(expected)
    # Integers past 64 bits in metadata are left to the reference writer (see `dumps`).
    if all(not isinstance(v, int) or abs(v) < 2**63 for v in t.metadata_.values()):
        assert orjson.loads(orjson.dumps(doc)) == expected


async def test_answers_validate_as_their_documented_models(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    t0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)
    await load_rows(
        app,
        [
            Row(
                "w1",
                t0,
                cost_micros=123_456,
                duration_us=2_500_000,
                error="x",
                input_message="é" * 300,
            ),
            Row("w2", t0 + timedelta(seconds=1)),
        ],
    )
    r = await client.get("/api/tasks", headers=auth("user"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body == _reference(Page[TaskSummary].model_validate(body))
    first = body["items"][1]
    assert first["created_at"] == "2026-11-01T12:00:00.123Z"
    assert first["cost_usd"] == 0.123456
    assert first["duration_seconds"] == 2.5
    assert first["has_error"] is True
    assert first["input_preview"] == "é" * 200

    r = await client.get("/api/tasks/w1", headers=auth("user"))
    assert r.status_code == 200
    assert r.json() == _reference(TaskPublic.model_validate(r.json()))
    r = await client.get("/api/tasks/w1/logs/full", headers=auth("user"))
    assert r.status_code == 200
    assert r.json() == _reference(FullLog.model_validate(r.json()))


async def test_metadata_with_huge_integers_is_answered(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    """orjson refuses integers past 64 bits; such answers take the reference writer."""
    huge = 2**70
    body = {"task_id": "big", "agent_type": "coder", "input_message": "x"}
    r = await client.post(
        "/api/tasks", json={**body, "metadata": {"n": huge}}, headers=auth("agent")
    )
    assert r.status_code == 201, r.text
    for path in ("/api/tasks/big", "/api/tasks/big/logs/full"):
        r = await client.get(path, headers=auth("user"))
        assert r.status_code == 200, r.text
        task = r.json() if path.endswith("big") else r.json()["task"]
        assert task["metadata"] == {"n": huge}
