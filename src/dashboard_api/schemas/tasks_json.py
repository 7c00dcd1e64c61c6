"""Task answers written straight to JSON bytes from database rows.

The Pydantic models in `schemas.tasks` stay the contract (OpenAPI `response_model`, and
the reference the tests compare against); building fifty of them per list page and
serializing them again cost more CPU than the queries. These functions produce the same
documents (same fields, order and values) with plain dicts and orjson.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from dashboard_api.db.paging import PageResult
from dashboard_api.timeutil import format_ts

_MICROS = 1_000_000


def ts(value: datetime) -> str:
    """`format_ts`, faster for the common case (a UTC datetime from the database)."""
    # isoformat truncates to milliseconds like format_ts; years before 1000 differ
    # (strftime does not pad them), so those take the reference path.
    if value.tzinfo is UTC and value.year >= 1000:
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"
    return format_ts(value)


def ts_or_none(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def usd(micros: int) -> float:
    """`money.micros_to_usd`: int / int true division is correctly rounded too."""
    return micros / _MICROS


def seconds_or_none(micros: int | None) -> float | None:
    return None if micros is None else micros / _MICROS


def summary_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """A `TaskSummary` document from a list row: SUMMARY_COLUMNS, input_preview, has_error."""
    (
        task_id, status, agent_type, assigned_agent, source, user_id, conversation_id,
        parent_task_id, flow_id, model, cost_micros, cost_reported, input_tokens,
        output_tokens, cache_read_tokens, cache_write_tokens, duration_us, created_at,
        started_at, completed_at, updated_at, cancel_requested, output_seq, output_truncated,
        lease_expires_at, failure_reason, attempt, max_attempts, retry_of, retry_task_id,
        input_preview, has_error,
    ) = row[:32]  # fmt: skip
    return {
        "task_id": task_id,
        "status": status,
        "agent_type": agent_type,
        "assigned_agent": assigned_agent,
        "source": source,
        "user_id": user_id,
        "conversation_id": conversation_id,
        "parent_task_id": parent_task_id,
        "flow_id": flow_id,
        "model": model,
        "cost_usd": cost_micros / _MICROS,
        "cost_basis": "reported" if cost_reported else "computed",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "duration_seconds": None if duration_us is None else duration_us / _MICROS,
        "created_at": ts(created_at),
        "started_at": None if started_at is None else ts(started_at),
        "completed_at": None if completed_at is None else ts(completed_at),
        "updated_at": ts(updated_at),
        "cancel_requested": bool(cancel_requested),
        "output_seq": output_seq,
        "output_truncated": bool(output_truncated),
        "lease_expires_at": None if lease_expires_at is None else ts(lease_expires_at),
        "failure_reason": failure_reason,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "retry_of": retry_of,
        "retry_task_id": retry_task_id,
        "input_preview": input_preview,
        "has_error": bool(has_error),
    }


def public_doc(t: Any) -> dict[str, Any]:
    """A `TaskPublic` document from a `Task` row (or anything with its attributes)."""
    return {
        "task_id": t.task_id,
        "status": t.status,
        "agent_type": t.agent_type,
        "assigned_agent": t.assigned_agent,
        "source": t.source,
        "user_id": t.user_id,
        "conversation_id": t.conversation_id,
        "parent_task_id": t.parent_task_id,
        "flow_id": t.flow_id,
        "model": t.model,
        "cost_usd": usd(t.cost_micros),
        "cost_basis": "reported" if t.cost_reported else "computed",
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cache_read_tokens": t.cache_read_tokens,
        "cache_write_tokens": t.cache_write_tokens,
        "duration_seconds": seconds_or_none(t.duration_us),
        "created_at": ts(t.created_at),
        "started_at": ts_or_none(t.started_at),
        "completed_at": ts_or_none(t.completed_at),
        "updated_at": ts(t.updated_at),
        "cancel_requested": bool(t.cancel_requested),
        "output_seq": t.output_seq,
        "output_truncated": bool(t.output_truncated),
        "lease_expires_at": ts_or_none(t.lease_expires_at),
        "failure_reason": t.failure_reason,
        "attempt": t.attempt,
        "max_attempts": t.max_attempts,
        "retry_of": t.retry_of,
        "retry_task_id": t.retry_task_id,
        "input_message": t.input_message,
        "result": t.result,
        "error": t.error,
        "metadata": t.metadata_,
    }


def page_json(result: PageResult[dict[str, Any]]) -> bytes:
    """The list envelope (docs/api.md §1) of one page of documents."""
    return orjson.dumps(
        {
            "items": result.items,
            "total": result.total,
            "page": result.page,
            "per_page": result.per_page,
            "pages": result.pages,
            "next_cursor": result.next_cursor,
        }
    )


def dumps(doc: Any, reference: Callable[[], bytes]) -> bytes:
    """orjson's bytes for `doc`; `reference()` (the Pydantic path) for what orjson refuses.

    Task metadata is free-form JSON: integers past 64 bits are valid there, and only
    the reference path can write them.
    """
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return reference()
