"""The task list's reference: brute-force answers over rows held in memory, page and cursor
walks through the API, hypothesis strategies for data and queries, and a fixed data set with
one query per filter (tests/tasks/test_list*.py compare the API with these)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from hypothesis import strategies as st

from tests.support.clock import T0
from tests.support.tasks import Row

Headers = Callable[[str], dict[str, str]]

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
AGENTS = ("coder", "reviewer", "triage")
SOURCES = ("api", "github", "slack")
MESSAGES = (
    "Fix ÄRGER now",
    "kein ärger",
    "100% done",
    "a_b c",
    "ab c",
    "plain text",
    "Ünïcode ÉTÉ",
    "x%y",
    "back\\slash",
    "it's O'Brien\\'s; --",
    "",
)
NEEDLES = (
    "'s",
    "\\'",
    "ärger",
    "ÄRGER",
    "%",
    "_",
    "a_b",
    "100%",
    "été",
    "ÉTÉ",
    "x%y",
    "PLAIN",
    "\\",
    "zz",
)
# Creation instants: few (many ties), on and off the 15-minute rollup blocks, some days
# apart, so that counted totals combine whole blocks with raw edges.
OFFSETS = [
    timedelta(0),
    timedelta(minutes=1),
    timedelta(minutes=14, seconds=59, microseconds=999_999),
    timedelta(minutes=15),
    timedelta(hours=1, minutes=7),
    timedelta(hours=5),
    timedelta(days=1, hours=3),
    timedelta(days=6, minutes=45),
    timedelta(days=-20, minutes=-3),
]
JITTER = st.sampled_from(
    [timedelta(0), timedelta(microseconds=1), timedelta(microseconds=-1), timedelta(minutes=7)]
)
SORTS = (
    "created_at",
    "-created_at",
    "cost_usd",
    "-cost_usd",
    "duration_seconds",
    "-duration_seconds",
)


def ts(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


# --- the reference ------------------------------------------------------------------------


def reference(rows: list[Row], params: dict[str, Any], sort: str) -> list[str]:
    """Filter and sort by brute force, as docs/api.md §3 words it."""

    def multi(name: str) -> set[str] | None:
        v = params.get(name)
        if v is None:
            return None
        values = v if isinstance(v, list) else [v]
        return {x for item in values for x in item.split(",") if x}

    out = []
    for r in rows:
        if (s := multi("status")) and r.status not in s:
            continue
        if (a := multi("agent_type")) and r.agent_type not in a:
            continue
        if (so := multi("source")) and r.source not in so:
            continue
        if "created_after" in params and r.created_at < params["created_after_dt"]:
            continue
        if "created_before" in params and r.created_at >= params["created_before_dt"]:
            continue
        if "conversation_id" in params and r.conversation_id != params["conversation_id"]:
            continue
        if "flow_id" in params and r.flow_id != params["flow_id"]:
            continue
        if "user_id" in params and r.user_id != params["user_id"]:
            continue
        if "q" in params and params["q"].lower() not in r.input_message.lower():
            continue
        out.append(r)

    desc = sort.startswith("-")
    field = sort.lstrip("-")
    if field == "created_at":
        out.sort(key=lambda r: (r.created_at, r.task_id), reverse=desc)
    elif field == "cost_usd":
        out.sort(key=lambda r: (r.cost_micros, r.task_id), reverse=desc)
    else:
        with_d = sorted(
            (r for r in out if r.duration_us is not None),
            key=lambda r: (r.duration_us or 0, r.task_id),
            reverse=desc,
        )
        without = sorted(
            (r for r in out if r.duration_us is None), key=lambda r: r.task_id, reverse=desc
        )
        out = with_d + without
    return [r.task_id for r in out]


def wire(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not k.endswith("_dt")}


async def walk_pages(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, Any], per_page: int
) -> tuple[list[str], int]:
    """Every page in page mode; checks the envelope of each page."""
    ids: list[str] = []
    page = 1
    total = -1
    while True:
        r = await client.get(
            "/api/tasks",
            params={**wire(params), "page": page, "per_page": per_page},
            headers=auth("user"),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        total = body["total"]
        assert body["page"] == page
        assert body["per_page"] == per_page
        assert body["pages"] == math.ceil(total / per_page)
        ids += [i["task_id"] for i in body["items"]]
        if page < body["pages"]:
            assert len(body["items"]) == per_page
            assert body["next_cursor"] is not None
            page += 1
            continue
        assert body["next_cursor"] is None
        return ids, total


async def walk_cursor(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, Any], per_page: int
) -> tuple[list[str], int]:
    """A cursor walk that starts with a plain request."""
    r = await client.get(
        "/api/tasks", params={**wire(params), "per_page": per_page}, headers=auth("user")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    total = body["total"]
    ids = [i["task_id"] for i in body["items"]]
    pages = 1
    while body["next_cursor"] is not None:
        r = await client.get(
            "/api/tasks",
            params={**wire(params), "per_page": per_page, "cursor": body["next_cursor"]},
            headers=auth("user"),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["page"] is None
        assert body["total"] == total
        assert body["pages"] == math.ceil(total / per_page)
        ids += [i["task_id"] for i in body["items"]]
        pages += 1
        assert pages <= total + 1, "the walk does not end"
    return ids, total


# --- data -------------------------------------------------------------------------------


@st.composite
def datasets(draw: st.DrawFn) -> list[Row]:
    n = draw(st.integers(0, 24))
    numbers = draw(st.lists(st.integers(0, 9999), min_size=n, max_size=n, unique=True))
    rows = []
    for num in numbers:
        rows.append(
            Row(
                task_id=f"t{num:04d}",
                # Few distinct instants and costs: many ties, so the tiebreaker matters.
                created_at=T0 + draw(st.sampled_from(OFFSETS)),
                status=draw(st.sampled_from(STATUSES)),
                agent_type=draw(st.sampled_from(AGENTS)),
                source=draw(st.sampled_from(SOURCES)),
                input_message=draw(st.sampled_from(MESSAGES)),
                user_id=draw(st.sampled_from([None, "u1", "u2"])),
                conversation_id=draw(st.sampled_from([None, "c1", "c2"])),
                flow_id=draw(st.sampled_from([None, "f1"])),
                cost_micros=draw(st.sampled_from([0, 1, 250_000, 1_000_000])),
                duration_us=draw(st.sampled_from([None, None, 0, 1_500_000, 60_000_000])),
            )
        )
    return rows


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {}

    def multi(name: str, values: tuple[str, ...]) -> None:
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))
            params[name] = ",".join(chosen) if draw(st.booleans()) else chosen

    multi("status", STATUSES)
    multi("agent_type", AGENTS)
    multi("source", SOURCES)
    if draw(st.booleans()):
        after = T0 + draw(st.sampled_from(OFFSETS)) + draw(JITTER)
        params["created_after"] = ts(after)
        params["created_after_dt"] = after
    if draw(st.booleans()):
        before = T0 + draw(st.sampled_from(OFFSETS)) + draw(JITTER)
        # Any offset is accepted: the same instant written in +02:00.
        params["created_before"] = before.astimezone(
            __import__("datetime").timezone(timedelta(hours=2))
        ).isoformat()
        params["created_before_dt"] = before
    for name, values in (
        ("user_id", ("u1", "u2", "nobody")),
        ("conversation_id", ("c1", "c2")),
        ("flow_id", ("f1",)),
        ("q", NEEDLES),
    ):
        if draw(st.integers(0, 3)) == 0:
            params[name] = draw(st.sampled_from(values))
    return params


# --- a fixed data set for each filter and sort -------------------------------------------


def fixed_rows() -> list[Row]:
    rows = []
    for i in range(30):
        rows.append(
            Row(
                task_id=f"k{(i * 7) % 30:03d}",
                created_at=T0 + timedelta(seconds=10 * (i % 6)),
                status=STATUSES[i % 5],
                agent_type=AGENTS[i % 3],
                source=SOURCES[(i // 3) % 3],
                input_message=MESSAGES[i % len(MESSAGES)],
                user_id=[None, "u1", "u2"][i % 3],
                conversation_id=[None, "c1"][i % 2],
                flow_id=["f1", None, None][i % 3],
                cost_micros=[0, 5, 5, 1_000_000][i % 4],
                duration_us=[None, 3, 3, 0, 10**9][i % 5],
                error="boom" if i % 4 == 0 else None,
            )
        )
    return rows


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "failed"},
    {"status": ["failed", "running"]},
    {"status": "failed,running"},
    {"agent_type": "coder"},
    {"agent_type": ["coder", "triage"]},
    {"agent_type": "coder,triage"},
    {"source": "github"},
    {"source": ["github", "slack"]},
    {"source": "github,slack"},
    {"conversation_id": "c1"},
    {"flow_id": "f1"},
    {"user_id": "u2"},
    {"q": "ärger"},
    {"q": "ÄRGER"},
    {"q": "%"},
    {"q": "_"},
    {"q": "a_b"},
    {"q": "\\"},
    {"q": "'s"},
    {"q": "BRIEN\\'S; --"},
    {"q": "été"},
    {
        "created_after": ts(T0 + timedelta(seconds=10)),
        "created_after_dt": T0 + timedelta(seconds=10),
    },
    {
        "created_before": ts(T0 + timedelta(seconds=30)),
        "created_before_dt": T0 + timedelta(seconds=30),
    },
    {
        "created_after": ts(T0 + timedelta(seconds=20)),
        "created_after_dt": T0 + timedelta(seconds=20),
        "created_before": ts(T0 + timedelta(seconds=30)),
        "created_before_dt": T0 + timedelta(seconds=30),
        "status": "completed,failed,queued",
    },
]
