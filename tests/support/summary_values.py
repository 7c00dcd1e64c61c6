"""Tasks whose summaries hold every kind of value a summary field takes, for the tests
that check a database's writer of summaries against Python's byte for byte (the export's
lines, a list page's items): text that needs quoting or escaping, null and empty text,
costs and durations of every magnitude, instants of any year and microsecond, flags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

_TEXT_ALPHABET = st.characters(codec="utf-8", exclude_characters="\x00", max_codepoint=0x2FFFF)
_AWKWARD = st.sampled_from(
    ["", " ", ",", '"', '""', "a,b", 'say "hi"', "\r", "\n", "\r\n", "\t", "\\", "\\.", "é"]
)
texts = st.one_of(_AWKWARD, st.text(_TEXT_ALPHABET, max_size=30))
optional_texts = st.one_of(st.none(), texts)
# Millionths around every boundary a writer changes its notation at.
micros = st.one_of(
    st.sampled_from([0, 1, 5, 9, 10, 15, 99, 100, 101, 999_999, 1_000_000, 1_500_000]),
    st.sampled_from([10**15 - 1, 10**15, 10**15 + 1, 2**53 + 1, 2**63 - 1, -1, -15, -(10**16)]),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.integers(min_value=0, max_value=2**63 - 1),
)
instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC)
)
counts = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def tasks(draw: st.DrawFn, i: int) -> dict[str, Any]:
    created = draw(instants)
    ended = draw(st.booleans())
    return {
        "task_id": f"t{i:03d}{draw(texts)}",
        # Not running: the lease reaper would end a running task between two exports.
        "status": draw(st.sampled_from(["queued", "completed", "failed", "cancelled"])),
        "agent_type": draw(texts),
        "assigned_agent": draw(optional_texts),
        "source": draw(texts),
        "input_message": draw(st.one_of(texts, st.text(_TEXT_ALPHABET, min_size=190))),
        "result": None,
        "error": draw(optional_texts),
        "user_id": draw(optional_texts),
        "conversation_id": draw(optional_texts),
        "parent_task_id": draw(optional_texts),
        "flow_id": draw(optional_texts),
        "model": draw(optional_texts),
        "cost_micros": draw(micros),
        "cost_reported": draw(st.booleans()),
        "input_tokens": draw(counts),
        "output_tokens": draw(counts),
        "cache_read_tokens": 0,
        "cache_write_tokens": draw(counts),
        "duration_us": draw(st.one_of(st.none(), micros)),
        "created_at": created,
        "started_at": created if ended else None,
        "completed_at": created + timedelta(microseconds=draw(st.integers(0, 10**9)))
        if ended
        else None,
        "updated_at": draw(instants),
        "cancel_requested": draw(st.booleans()),
        "metadata_": {},
        "output_seq": draw(st.integers(0, 2**31 - 1)),
        "output_bytes": 0,
        "output_truncated": draw(st.booleans()),
        "lease_expires_at": draw(st.one_of(st.none(), instants)),
        "failure_reason": draw(optional_texts),
        "attempt": draw(st.integers(1, 5)),
        "max_attempts": 5,
        "retry_of": draw(optional_texts),
        "retry_task_id": draw(optional_texts),
    }


@st.composite
def datasets(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=1, max_value=8))
    return [draw(tasks(i)) for i in range(n)]
