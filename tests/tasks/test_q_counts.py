"""`q` totals from per-hour counts cached per process (services/tasks/search.py), and
the totals of id filters (here `user_id`) without q, counted the same way.

A random history of registrations (also into old hours: back-fills), status moves, folds
and rebuilds, interleaved with q lists served by two app instances (two caches) over one
database: every total equals a brute-force count, and walking the pages returns each
match exactly once, in order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.app import create_app
from dashboard_api.services.analytics.fold import fold_pending
from dashboard_api.services.analytics.rebuild import rebuild_rollups
from dashboard_api.services.tasks import ALLOWED_MOVES, search, search_hours, search_sql
from tests.support.clock import T0
from tests.support.env import Backend
from tests.support.tasks import clear_tasks
from tests.support.tokens import make_token

MESSAGES = ("pay the bill", "PAYMENTS due", "flaky job #12", "x%y pay", "nothing", "Pay_me")
NEEDLES = ("pay", "PAYMENTS", "flaky job #12", "%", "_", "zz", None)
USERS = (None, "u1", "u2")
# Creation instants: on and off hour boundaries, in the current hours and far back (a
# back-fill lands in an hour whose count may be cached already).
OFFSETS = (
    timedelta(0),
    timedelta(microseconds=1),
    timedelta(minutes=59, seconds=59, microseconds=999_999),
    timedelta(hours=1),
    timedelta(hours=1, minutes=30),
    timedelta(hours=3),
    timedelta(days=-2, minutes=5),
    timedelta(days=-40, hours=7),
)
WINDOWS = (
    (None, None),
    (None, T0 + timedelta(hours=1)),
    (T0 - timedelta(days=3), None),
    (T0 + timedelta(microseconds=1), T0 + timedelta(hours=2, minutes=1)),
    (T0 - timedelta(days=41), T0 + timedelta(minutes=30)),
)
SORTS = ("-created_at", "created_at", "cost_usd", "-duration_seconds")
STATUS_FILTERS = ((), ("queued",), ("running", "completed"), ("failed", "cancelled"))


@dataclass
class Apps:
    apps: list[FastAPI]
    clients: list[httpx.AsyncClient]
    user: dict[str, str]
    agent: dict[str, str]


@pytest.fixture
async def two_apps(backend: Backend) -> AsyncIterator[Apps]:
    """Two app instances (two processes' caches) on one database; folds by hand."""
    settings = backend.settings(analytics_fold_interval_seconds=0)
    apps = [create_app(settings), create_app(settings)]
    async with LifespanManager(apps[0]), LifespanManager(apps[1]):
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://test")
            for a in apps
        ]
        user = await make_token(apps[0], role="user", user_id="alice")
        agent = await make_token(apps[0], role="agent", user_id="agent-1")
        yield Apps(
            apps,
            clients,
            {"Authorization": f"Bearer {user}"},
            {"Authorization": f"Bearer {agent}"},
        )
        for c in clients:
            await c.aclose()


@dataclass
class Model:
    """What the database should hold: task_id -> (created_at, message, status, user)."""

    tasks: dict[str, tuple[datetime, str, str, str]]

    def matches(
        self,
        q: str | None,
        user: str | None,
        statuses: tuple[str, ...],
        lo: datetime | None,
        hi: datetime | None,
    ) -> list[tuple[datetime, str]]:
        return sorted(
            (at, task_id)
            for task_id, (at, message, status, owner) in self.tasks.items()
            if (q is None or q.lower() in message.lower())
            and (user is None or owner == user)
            and (not statuses or status in statuses)
            and (lo is None or at >= lo)
            and (hi is None or at < hi)
        )


def ts(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


async def walk(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any], per_page: int
) -> tuple[list[str], set[int]]:
    """Every page in page mode: the ids in order, and every total answered."""
    ids: list[str] = []
    totals: set[int] = set()
    page = 1
    while True:
        r = await client.get(
            "/api/tasks", params={**params, "page": page, "per_page": per_page}, headers=headers
        )
        assert r.status_code == 200, r.text
        body = r.json()
        totals.add(body["total"])
        ids += [t["task_id"] for t in body["items"]]
        if not body["items"] or page >= body["pages"]:
            return ids, totals
        page += 1


async def walk_cursor(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any], per_page: int
) -> tuple[list[str], set[int]]:
    """Every page in cursor mode: the ids in order, and every total answered."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor = None
    while True:
        query = {**params, "per_page": per_page, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/tasks", params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        totals.add(body["total"])
        ids += [t["task_id"] for t in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, totals


Register = tuple[str, int, int, str, int]
Move = tuple[str, int, str]
Listing = tuple[str, int, int, int, int, int, int, int]
Step = Register | Move | Listing | tuple[str]

writes = st.one_of(
    st.tuples(
        st.just("register"),
        st.integers(0, len(OFFSETS) - 1),
        st.integers(0, len(MESSAGES) - 1),
        st.sampled_from(["queued", "running"]),
        st.integers(1, len(USERS) - 1),
    ),
    st.tuples(
        st.just("move"),
        st.integers(0, 40),
        st.sampled_from(["running", "completed", "failed", "cancelled"]),
    ),
    st.tuples(st.just("fold")),
    st.tuples(st.just("rebuild")),
)
# A list after every write: a cached count is reused (or must not be) right after the
# write that changed its hour. Few needles, filters and windows, so that they repeat.
listings = st.tuples(
    st.just("list"),
    st.integers(0, 1),
    st.sampled_from([0, 1, 2, len(NEEDLES) - 1]),  # the last: no q
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, len(USERS) - 1),
    st.integers(0, len(SORTS) - 1),
    st.integers(1, 4),
)
steps = st.lists(st.tuples(writes, listings), min_size=1, max_size=25).map(
    lambda pairs: [step for pair in pairs for step in pair]
)


@pytest.fixture(params=["keys of every match", "newest keys"])
def kept_keys(request: pytest.FixtureRequest) -> Iterator[None]:
    """As the service keeps them, or at most 2 match keys per q (then a q with more keeps
    those of its newest hours: pages past them, ascending orders and cursors must fall
    back to reading the table)."""
    if request.param == "keys of every match":
        yield
        return
    patch = pytest.MonkeyPatch()
    for module in (search_hours, search, search_sql):
        patch.setattr(module, "KEYS_KEPT", 2)
    patch.setattr(search, "_SPARSE", 1)  # a token per match at least: always sparse
    yield
    patch.undo()


@pytest.mark.slow  # ~10 s a backend: started first, so the other workers overlap it
@given(history=steps)
async def test_q_totals_follow_every_write(
    two_apps: Apps, kept_keys: None, history: list[Step]
) -> None:
    env = two_apps
    await clear_tasks(env.apps[0])
    db = env.apps[0].state.ctx.db
    model = Model({})
    order: list[str] = []
    run = uuid.uuid4().hex[:6]
    for step in history:
        kind = step[0]
        if kind == "register":
            _, offset, message, status, user = step  # type: ignore[misc]
            task_id = f"{run}-{len(order):03d}"
            at = T0 + OFFSETS[offset]
            body = {
                "task_id": task_id,
                "agent_type": "coder",
                "input_message": MESSAGES[message],
                "status": status,
                "created_at": ts(at),
                "user_id": USERS[user],
            }
            r = await env.clients[len(order) % 2].post("/api/tasks", json=body, headers=env.agent)
            assert r.status_code == 201, r.text
            model.tasks[task_id] = (at, MESSAGES[message], status, str(USERS[user]))
            order.append(task_id)
        elif kind == "move":
            _, which, target = step  # type: ignore[misc]
            if not order:
                continue
            task_id = order[which % len(order)]
            at, message, status, owner = model.tasks[task_id]
            if target not in ALLOWED_MOVES[status]:
                continue
            r = await env.clients[which % 2].patch(
                f"/api/tasks/{task_id}", json={"status": target}, headers=env.agent
            )
            assert r.status_code == 200, r.text
            model.tasks[task_id] = (at, message, target, owner)
        elif kind == "fold":
            await fold_pending(db)
        elif kind == "rebuild":
            async with db.write() as session:
                await rebuild_rollups(session)
        else:
            _, app, needle, statuses, window, user, sort, per_page = step  # type: ignore[misc]
            lo, hi = WINDOWS[window]
            q = NEEDLES[needle]
            params: dict[str, Any] = {"sort": SORTS[sort]}
            if q is not None:
                params["q"] = q
            if USERS[user] is not None:
                params["user_id"] = USERS[user]
            if STATUS_FILTERS[statuses]:
                params["status"] = ",".join(STATUS_FILTERS[statuses])
            if lo is not None:
                params["created_after"] = ts(lo)
            if hi is not None:
                params["created_before"] = ts(hi)
            expected = model.matches(q, USERS[user], STATUS_FILTERS[statuses], lo, hi)
            for walker in (walk, walk_cursor):
                ids, totals = await walker(env.clients[app], env.user, params, per_page)
                assert totals == {len(expected)}
                assert sorted(ids) == sorted(task_id for _, task_id in expected)
                if SORTS[sort].endswith("created_at"):
                    in_order = [task_id for _, task_id in expected]
                    assert ids == (in_order[::-1] if SORTS[sort].startswith("-") else in_order)


@pytest.fixture
async def without_rollups(backend: Backend) -> AsyncIterator[tuple[httpx.AsyncClient, Apps]]:
    settings = backend.settings(analytics_rollups_enabled=False, analytics_fold_interval_seconds=0)
    app = create_app(settings)
    async with LifespanManager(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        user = await make_token(app, role="user", user_id="alice")
        agent = await make_token(app, role="agent", user_id="agent-1")
        yield client, Apps([app], [client], {"Authorization": f"Bearer {user}"},
                           {"Authorization": f"Bearer {agent}"})  # fmt: skip
        await client.aclose()


async def test_rollups_disabled_counts_raw(
    without_rollups: tuple[httpx.AsyncClient, Apps],
) -> None:
    """Writes record no contributions then, so no token can move: nothing is cached."""
    client, env = without_rollups
    for i in range(6):
        body = {
            "task_id": f"off-{i}",
            "agent_type": "coder",
            "input_message": "pay day" if i % 2 else "other",
            "created_at": ts(T0 - timedelta(days=i)),
        }
        assert (await client.post("/api/tasks", json=body, headers=env.agent)).status_code == 201
        r = await client.get("/api/tasks", params={"q": "PAY"}, headers=env.user)
        assert r.json()["total"] == (i + 1) // 2
    r = await client.patch("/api/tasks/off-1", json={"status": "running"}, headers=env.agent)
    assert r.status_code == 200
    r = await client.get("/api/tasks", params={"q": "pay", "status": "queued"}, headers=env.user)
    assert r.json()["total"] == 2


async def test_newest_keys_page_like_the_table(
    two_apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A q with more matches than the keys kept (3 here) keeps those of its newest hours:
    every order, page and cursor walk still gives the brute-force pages and totals (the
    pages past the kept hours, the ascending orders and the cursors below them read the
    table), before and after writes into the kept hours and older ones."""
    for module in (search_hours, search, search_sql):
        monkeypatch.setattr(module, "KEYS_KEPT", 3)
    monkeypatch.setattr(search, "_SPARSE", 1)
    env = two_apps
    await clear_tasks(env.apps[0])
    model = Model({})
    needle = "flaky job #12"

    async def register(task_id: str, at: datetime, message: str) -> None:
        body = {
            "task_id": task_id,
            "agent_type": "coder",
            "input_message": message,
            "status": "queued",
            "created_at": ts(at),
        }
        r = await env.clients[0].post("/api/tasks", json=body, headers=env.agent)
        assert r.status_code == 201, r.text
        model.tasks[task_id] = (at, message, "queued", "None")

    # One match an hour over ten hours (and a miss beside each), two in an older hour.
    for k in range(10):
        await register(f"m{k:02d}", T0 - timedelta(hours=k, minutes=-5), needle)
        await register(f"n{k:02d}", T0 - timedelta(hours=k, minutes=-6), "nothing")
    for k in range(2):
        await register(f"o{k:02d}", T0 - timedelta(hours=12, minutes=k), needle)
    windows = [(None, None), (T0 - timedelta(hours=5, minutes=30), None)]
    for round_ in range(2):
        for sort in SORTS:
            for lo, hi in windows:
                params: dict[str, Any] = {"q": needle, "sort": sort}
                if lo is not None:
                    params["created_after"] = ts(lo)
                expected = [i for _, i in model.matches(needle, None, (), lo, hi)]
                if sort == "-created_at":
                    expected.reverse()
                for app in (0, 1):
                    for per_page in (1, 3):
                        for walker in (walk, walk_cursor):
                            ids, totals = await walker(env.clients[app], env.user, params, per_page)
                            assert totals == {len(expected)}, (round_, sort, lo, per_page)
                            if sort.endswith("created_at"):
                                assert ids == expected, (round_, sort, lo, per_page)
                            else:
                                assert sorted(ids) == sorted(expected)
        if round_ == 0:
            await register("m-new", T0 + timedelta(minutes=10), needle)  # a kept hour
            await register("m-old", T0 - timedelta(hours=11), needle)  # an older one
    async with env.apps[0].state.ctx.db.write() as session:
        cache = search_hours.cache_of(session)
    assert cache is not None
    entry = cache.get(((), (), (), needle, (), None, None, None))
    assert entry is not None
    assert entry.keys is not None
    assert entry.keys_from is not None
    assert 0 < entry.keys_held <= 3
