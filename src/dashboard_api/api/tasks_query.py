"""The task list's query string read without FastAPI's dependency machinery (`api.lean`).

`parse_list_query` takes only what the declared parameters of `GET /api/tasks`
(`deps.page_request`, `tasks.task_filters`, `sort`) accept, and reads it to the same
values; for anything else (a malformed, out of range or doubtful value, `page` with
`cursor`) it answers None and FastAPI reads the request, errors included. Each check
here is a subset of the declared constraint, never a copy to keep in step with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import get_args

from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import QueryParams

from dashboard_api.api.deps import split_multi
from dashboard_api.db.paging import PageRequest
from dashboard_api.ids import TASK_ID_PATTERN
from dashboard_api.schemas.tasks import SortKey
from dashboard_api.services.tasks import TaskFilters
from dashboard_api.task_statuses import FAILURE_REASONS, TASK_STATUSES
from dashboard_api.timeutil import UtcDateTime


@dataclass(frozen=True, slots=True)
class ListQuery:
    page: PageRequest
    filters: TaskFilters
    sort: str


def _known_list(allowed: Sequence[str]) -> re.Pattern[str]:
    """Comma lists of known values, nothing else (no blanks, no spaces)."""
    one = "|".join(re.escape(v) for v in allowed)
    return re.compile(rf"(?:{one})(?:,(?:{one}))*")


_STATUS = _known_list(TASK_STATUSES)
_FAILURE_REASON = _known_list(FAILURE_REASONS)
_SORTS = frozenset(get_args(SortKey))
_PAGE = re.compile(r"[1-9][0-9]{0,7}")  # <= 10,000,000 checked too
_PER_PAGE = re.compile(r"[1-9][0-9]{0,2}")  # <= 200 checked too
_TIMESTAMP = TypeAdapter(UtcDateTime)
# TASK_ID_PATTERN without its anchors, for fullmatch (`$` would let a final newline by).
TASK_ID = re.compile(TASK_ID_PATTERN.removeprefix("^").removesuffix("$"))

_MULTI = ("status", "agent_type", "source", "failure_reason")
_SINGLE = ("conversation_id", "flow_id", "user_id", "q", "created_after", "created_before")
_KNOWN = frozenset((*_MULTI, *_SINGLE, "page", "per_page", "cursor", "sort"))
# Text filters and their max_length (their pattern refuses only NUL).
_TEXT_MAX = {"conversation_id": 255, "flow_id": 255, "user_id": 255, "q": 1000}


def parse_list_query(params: QueryParams) -> ListQuery | None:
    """The list's page, filters and sort, or None when FastAPI should read the request."""
    got: dict[str, list[str]] = {}
    for key, value in params.multi_items():
        if key in _KNOWN:
            if "\x00" in value:
                return None
            got.setdefault(key, []).append(value)
    if not got:
        return _DEFAULT
    # A repeated single parameter: FastAPI takes its last value.
    one = {key: values[-1] for key, values in got.items()}
    page_request = _page_request(one)
    text: dict[str, str | None] = {}
    for key, limit in _TEXT_MAX.items():
        found = one.get(key)
        if found is not None and len(found) > limit:
            return None
        text[key] = found
    times: list[datetime | None] = []
    for key in ("created_after", "created_before"):
        given = one.get(key)
        times.append(None if given is None else _timestamp(given))
        if given is not None and times[-1] is None:
            return None
    status, reasons = got.get("status", ()), got.get("failure_reason", ())
    sort = one.get("sort", "-created_at")
    if (
        page_request is None
        or sort not in _SORTS
        or not all(_STATUS.fullmatch(v) for v in status)
        or not all(_FAILURE_REASON.fullmatch(v) for v in reasons)
    ):
        return None
    filters = TaskFilters(
        status=split_multi(status, name="status"),
        agent_type=split_multi(got.get("agent_type"), name="agent_type"),
        source=split_multi(got.get("source"), name="source"),
        created_after=times[0],
        created_before=times[1],
        conversation_id=text["conversation_id"],
        flow_id=text["flow_id"],
        user_id=text["user_id"],
        q=text["q"],
        failure_reason=split_multi(reasons, name="failure_reason"),
    )
    return ListQuery(page_request, filters, sort)


_DEFAULT = ListQuery(PageRequest(), TaskFilters(), "-created_at")


def _page_request(one: dict[str, str]) -> PageRequest | None:
    page, per_page, cursor = one.get("page"), one.get("per_page"), one.get("cursor")
    if page is not None and (cursor is not None or not _PAGE.fullmatch(page)):
        return None
    if per_page is not None and not _PER_PAGE.fullmatch(per_page):
        return None
    if cursor is not None and len(cursor) > 4096:
        return None
    number = None if page is None else int(page)
    size = 50 if per_page is None else int(per_page)
    if (number is not None and number > 10_000_000) or size > 200:
        return None
    return PageRequest(per_page=size, page=number, cursor=cursor)


def _timestamp(value: str) -> datetime | None:
    try:
        return _TIMESTAMP.validate_python(value)
    except ValidationError:
        return None
