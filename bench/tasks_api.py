"""Task API benchmark on 1,000,000 tasks in PostgreSQL, through a real uvicorn server.

Run: `.venv/bin/python -m bench.tasks_api [--requests 100] [--reseed]` (see bench/README.md).
It creates (or reuses) its own database, seeds it with `dashboard-api seed`, serves it
with uvicorn on loopback, and measures list, detail, log and append requests over real
HTTP/1.1 keep-alive connections (a minimal client, see `bench._common.KeepAliveClient`);
the naive query (OFFSET paging plus count(*) of the filtered rows) is timed directly on
the database in the same run as the baseline. Every `total` the API answers is checked
against count(*) of the same filter. `--before-src DIR` also serves the same database
from another checkout's `src` (e.g. the previous commit) and measures it in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench._bench_db import BACKENDS, BenchDB
from bench._common import (
    BIN,
    KeepAliveClient,
    cli,
    free_port,
    log,
    pct,
    stop_server,
    timed,
)
from bench._tasks_api_cases import (
    COLD_NEEDLES,
    COLD_TARGETS,
    DEEP_TARGET_X,
    FLOOR,
    LIST_TARGET_MS,
    ListCase,
    Result,
    append_throughput,
    list_cases,
    naive_sql,
    page_throughput,
)

DB_NAME = os.environ.get("DASHBOARD_BENCH_DB", "dash_bench_tasks")
DB = BenchDB("postgresql", DB_NAME)  # --db, --backend (sqlite: the file /tmp/DB.sqlite3)
N_TASKS = 1_000_000
# The cursor goes half the tasks deep; the page number stops at 10,001 (500,000 deep):
# OFFSET paging that deep is what the page parameter is for, not 5,000,000 rows.
DEPTH = 500_000
PAGE_DEPTH = 500_000


# --- database setup -----------------------------------------------------------------------


async def rollups_consistent() -> bool | None:
    """Whether the analytics rollups (when the schema has them) count every task."""
    if not await DB.has_table("analytics_rollups"):
        return None
    conn = await DB.connect()
    try:
        grain = await conn.fetchval("SELECT max(grain) FROM analytics_rollups")
        counted = await conn.fetchval(
            "SELECT coalesce(sum(tasks), 0) FROM analytics_rollups WHERE grain = $1 AND series = 0",
            grain,
        )
        return int(counted or 0) == int(await conn.fetchval("SELECT count(*) FROM tasks"))
    finally:
        await conn.close()


async def rebuild_rollups() -> float:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from dashboard_api.services.analytics.rebuild import rebuild_rollups as rebuild

    # Its own engine: a rebuild of 1M tasks outlasts the app's 60 s statement timeout.
    timeout = {"command_timeout": None} if DB.backend == "postgresql" else {}
    engine = create_async_engine(DB.url, connect_args=timeout)
    start = time.perf_counter()
    try:
        async with AsyncSession(engine) as session, session.begin():
            await rebuild(session)
    finally:
        await engine.dispose()
    return time.perf_counter() - start


# --- measuring ----------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    global N_TASKS, DEPTH, PAGE_DEPTH, DB
    N_TASKS = args.tasks
    DEPTH = N_TASKS // 2
    PAGE_DEPTH = min(PAGE_DEPTH, DEPTH)
    DB = BenchDB(args.backend, args.db)
    env = {**os.environ, "DASHBOARD_DATABASE_URL": DB.url, "DASHBOARD_LOG_LEVEL": "WARNING"}
    env.pop("DASHBOARD_REDIS_URL", None)
    results: list[Result] = []

    # 1. Data: reuse a seeded database, or seed one and time it.
    count = await DB.task_count()
    if args.reseed or count is None or count < N_TASKS:
        log(f"seeding {N_TASKS:,} tasks into {DB.url} ...")
        await DB.recreate()
        cli("migrate", env=env)
        start = time.perf_counter()
        cli("seed", "--tasks", str(N_TASKS), "--random-seed", "1", env=env)
        seed_s = time.perf_counter() - start
        results.append(
            Result(
                f"seed {N_TASKS:,} tasks",
                rate=f"{seed_s:.1f} s",
                target="< 120 s",
                met=seed_s < 120,
            )
        )
        vac = await DB.vacuum_analyze(["tasks", "task_events"])
        if vac is not None:
            results.append(Result("VACUUM ANALYZE after the load", rate=f"{vac:.1f} s"))
        if (size := DB.size_bytes()) is not None:
            per_task = f"{size / N_TASKS:,.0f} bytes per task"
            results.append(Result("database file", rate=f"{size / 1e6:,.0f} MB", note=per_task))
    else:
        log(f"reusing {DB.url} ({count:,} tasks)")
        cli("migrate", env=env)
        results.append(Result(f"seed {N_TASKS:,} tasks", rate="reused", note="--reseed to time it"))
        await DB.vacuum_analyze(["tasks", "task_events"])
    consistent = await rollups_consistent()
    if consistent is False:
        log("rebuilding analytics rollups (the seed bypasses the task hooks) ...")
        results.append(Result("rebuild analytics rollups", rate=f"{await rebuild_rollups():.1f} s"))

    # 2. Tokens, data for the measurements, the naive baseline, then each server.
    user = cli("token", "create", "--user", "bench", "--role", "user", env=env).split()[-1]
    agent = cli("token", "create", "--user", "bench-agent", "--role", "agent", env=env).split()[-1]
    # The baseline does not fold: an older release's fold would not count `changes`
    # (migration 0010), on which this code's cached q counts rely.
    before_env = {
        **env,
        "PYTHONPATH": str(Path(args.before_src or ".") / "src"),
        "DASHBOARD_ANALYTICS_FOLD_INTERVAL_SECONDS": "0",
    }
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(Server(env, workers=1))
        servers = [("", server.port)]
        if args.before_src:
            before = await stack.enter_async_context(Server(before_env, workers=1))
            servers.append(("before: ", before.port))
        setup = await prepare(server.port, user, agent)
        await measure(servers, user, agent, setup, args, results)
        if not args.latency_only:
            uh = {"Authorization": f"Bearer {user}"}
            await measure_httpx(servers, uh, agent, args.requests, results)
        for prefix, port in servers if not args.latency_only else []:
            results.append(await page_throughput(port, user, workers=1, prefix=prefix))
    for workers in args.workers if not args.latency_only else []:
        if workers > 1 and DB.backend == "postgresql":  # SQLite: one process
            async with Server(env, workers=workers) as server:
                results.append(await page_throughput(server.port, user, workers, prefix=""))
    if not args.latency_only:
        await baseline(setup, results)

    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


class Server:
    """`uvicorn dashboard_api.app:create_app` in a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.env, self.workers = env, workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Server:
        # BENCH_PROFILE=DIR (one worker): the server runs under cProfile and writes
        # DIR/server-PORT.prof when it is stopped (`stop_server`).
        profile = (
            ["-m", "cProfile", "-o", f"{os.environ['BENCH_PROFILE']}/server-{self.port}.prof"]
            if os.environ.get("BENCH_PROFILE") and self.workers == 1
            else []
        )
        self.proc = subprocess.Popen(
            [str(BIN / "python"), *profile, "-m", "uvicorn", "dashboard_api.app:create_app",
             "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--no-access-log", "--workers", str(self.workers),
             # The measuring connection may idle for seconds (the other server's cold
             # requests, a count(*)): uvicorn closes keep-alive connections after 5 s.
             "--timeout-keep-alive", "120"],
            env=self.env,
        )  # fmt: skip
        for _ in range(1200):  # 2 minutes: a loaded shared machine starts it slowly
            try:
                async with KeepAliveClient("127.0.0.1", self.port) as probe:
                    if (await probe.get("/api/health"))[0] == 200:
                        return self
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("the server did not start")

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        stop_server(self.proc)


@dataclass
class Setup:
    """What the measurements need, made once (the servers share the database)."""

    cases: list[ListCase]
    week_args: list[datetime]
    deep_cursor: str
    detail_id: str
    log_task: str

    async def count(self, case: ListCase) -> int:
        """count(*) of the case's filter, straight on the database."""
        db = await DB.connect()
        try:
            sql_args = self.week_args if "$1" in case.where else []
            sql = f"SELECT count(*) FROM tasks {case.where}"  # noqa: S608
            return int(await db.fetchval(sql, *sql_args))
        finally:
            await db.close()

    async def time_count(self, case: ListCase, reps: int = 3) -> float:
        """p50 ms of count(*) of the case's filter, straight on the database (asyncpg or
        sqlite3, one connection, after one untimed run)."""
        db = await DB.connect()
        try:
            sql_args = self.week_args if "$1" in case.where else []
            sql = f"SELECT count(*) FROM tasks {case.where}"  # noqa: S608
            return pct(await timed(reps, lambda: db.fetchval(sql, *sql_args)), 0.5)
        finally:
            await db.close()


async def prepare(port: int, user: str, agent: str) -> Setup:
    from dashboard_api.db.paging import encode_cursor
    from dashboard_api.services.tasks import ORDERINGS

    now = datetime.now(UTC)
    week = {
        "created_after": (now - timedelta(days=7)).isoformat(),
        "created_before": now.isoformat(),
    }
    week_args = [now - timedelta(days=7), now]
    base = f"http://127.0.0.1:{port}"
    ah = {"Authorization": f"Bearer {agent}"}
    async with httpx.AsyncClient(base_url=base, timeout=120, headers=ah) as client:
        # A few tasks of one conversation (the seed has none) through the producer API.
        for i in range(20):
            r = await client.post(
                "/api/tasks",
                json={"agent_type": "claude-code", "input_message": f"bench {i}",
                      "conversation_id": "bench-conv", "source": "dashboard"},
            )  # fmt: skip
            r.raise_for_status()
        r = await client.post(
            "/api/tasks", json={"agent_type": "claude-code", "input_message": "log bench"}
        )
        r.raise_for_status()
        log_task = r.json()["task_id"]
        chunks = [{"content": f"line {i:04d}: " + "x" * 60 + "\n"} for i in range(1000)]
        r = await client.post(f"/api/tasks/{log_task}/output", json={"chunks": chunks})
        r.raise_for_status()
    cases = list_cases(week)
    db = await DB.connect()
    try:
        # A cursor half the tasks deep (its key read from the database).
        row = await db.fetchrow(
            "SELECT created_at, task_id FROM tasks ORDER BY created_at DESC, task_id DESC "  # noqa: S608
            f"LIMIT 1 OFFSET {DEPTH - 1}"
        )
        detail_id = await db.fetchval("SELECT task_id FROM tasks ORDER BY created_at DESC LIMIT 1")
    finally:
        await db.close()
    cursor = encode_cursor(ORDERINGS["-created_at"], [row["created_at"], row["task_id"]])
    return Setup(cases, week_args, cursor, detail_id, log_task)


async def measure(
    servers: list[tuple[str, int]],
    user: str,
    agent: str,
    setup: Setup,
    args: argparse.Namespace,
    results: list[Result],
) -> None:
    """Every latency figure, one request at a time on one keep-alive connection per server.

    With several servers (prefix, port) the requests alternate between them, so that the
    load of a shared machine weighs on each the same way.
    """
    n = args.requests
    uh = {"Authorization": f"Bearer {user}"}
    list_target = f"p50 <= {LIST_TARGET_MS:.0f} ms"
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(KeepAliveClient("127.0.0.1", port, uh))
            for _, port in servers
        ]

        async def get(c: KeepAliveClient, path: str, params: dict[str, Any] | None = None) -> bytes:
            status, body = await c.get(path, params)
            if status != 200:
                raise RuntimeError(f"GET {path} {params}: {status} {body[:300]!r}")
            return body

        async def sample(
            count: int, path: str, params: dict[str, Any] | None = None
        ) -> list[list[float]]:
            out: list[list[float]] = [[] for _ in clients]
            for i, c in enumerate(clients):
                start = time.perf_counter()
                await get(c, path, params)  # warm-up
                first[i] = (time.perf_counter() - start) * 1000
            for _ in range(count):
                for i, c in enumerate(clients):
                    start = time.perf_counter()
                    await get(c, path, params)
                    out[i].append((time.perf_counter() - start) * 1000)
                    # The floor, on the same connection at the same moments: every
                    # figure is also reported as a multiple of it.
                    start = time.perf_counter()
                    await get(c, "/api/health")
                    floor[i].append((time.perf_counter() - start) * 1000)
            return out

        first = [0.0 for _ in clients]
        floor: list[list[float]] = [[] for _ in clients]
        for case in setup.cases:
            count_ms = None
            if "q" in case.params:
                # The plain count of the same filter, right before the cold requests: what
                # a first request should cost about (the load of a shared machine moves).
                count_ms = await setup.time_count(case)
                results.append(
                    Result(
                        "count(*): " + case.name.removeprefix("list: "), count_ms, None, 3,
                        note="count(*) of the filter right before the cold requests, direct",
                    )
                )  # fmt: skip
            per_server = await sample(n, "/api/tasks", case.params)
            cold = list(first)
            truth = await setup.count(case)
            for (prefix, _), c, samples in zip(servers, clients, per_server, strict=True):
                body = json.loads(await get(c, "/api/tasks", case.params))
                note = f"total {body['total']:,}"
                if body["total"] != truth:
                    note += f" WRONG (count(*) = {truth:,})"
                p50 = pct(samples, 0.5)
                results.append(
                    Result(
                        prefix + case.name, p50, pct(samples, 0.99), n, note=note,
                        target=list_target, met=p50 <= LIST_TARGET_MS,
                        naive="naive: " + case.name.removeprefix("list: "),
                    )
                )  # fmt: skip
            if "q" in case.params:
                # q totals come from per-hour counts each process caches (and checks in
                # the page's statement): the first request of a server counts every
                # hour, the p50 above is the warm figure.
                for (prefix, _), ms in zip(servers, cold, strict=True):
                    x = f"{ms / count_ms:.2f}x count(*); " if count_ms else ""
                    results.append(
                        Result(
                            prefix + case.name + ", cold (first request)", ms, None, 1,
                            note=x + "first request of this q on the server (once)",
                            naive="naive: " + case.name.removeprefix("list: "),
                        )
                    )  # fmt: skip

        if not args.latency_only:
            await measure_cold(servers, clients, get, setup, results)

        deep = await sample(n, "/api/tasks", {"cursor": setup.deep_cursor})
        by_page = await sample(max(5, n // 10), "/api/tasks", {"page": PAGE_DEPTH // 50 + 1})
        detail = await sample(n, f"/api/tasks/{setup.detail_id}")
        full = await sample(n, f"/api/tasks/{setup.log_task}/logs/full")
        for i, (prefix, _) in enumerate(servers):
            results += [
                Result(
                    prefix + f"list: cursor {DEPTH:,} deep", pct(deep[i], 0.5), pct(deep[i], 0.99),
                    n, target=f"{list_target}; >= {DEEP_TARGET_X:.0f}x OFFSET",
                    met=pct(deep[i], 0.5) <= LIST_TARGET_MS, naive=f"naive: OFFSET {DEPTH:,}",
                ),
                Result(
                    prefix + f"list: page {PAGE_DEPTH // 50 + 1:,} ({PAGE_DEPTH:,} deep)",
                    pct(by_page[i], 0.5), pct(by_page[i], 0.99), len(by_page[i]),
                    target=list_target, met=pct(by_page[i], 0.5) <= LIST_TARGET_MS,
                    naive=f"naive: OFFSET {PAGE_DEPTH:,}",
                ),
                Result(prefix + "task detail", pct(detail[i], 0.5), pct(detail[i], 0.99), n),
                Result(
                    prefix + "full log (1,000 chunks)", pct(full[i], 0.5), pct(full[i], 0.99), n
                ),
                Result(
                    prefix + FLOOR, pct(floor[i], 0.5), pct(floor[i], 0.99), len(floor[i]),
                    note="one after each request above, on the same connection",
                ),
            ]  # fmt: skip


async def measure_httpx(
    servers: list[tuple[str, int]],
    uh: dict[str, str],
    agent: str,
    n: int,
    results: list[Result],
) -> None:
    # The same first page through httpx: what a heavier client adds to each request.
    async with contextlib.AsyncExitStack() as stack:
        hcs = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=uh)
            )
            for _, port in servers
        ]
        via_httpx: list[list[float]] = [[] for _ in hcs]
        for hc in hcs:
            await hc.get("/api/tasks")
        for _ in range(n):
            for i, hc in enumerate(hcs):
                start = time.perf_counter()
                (await hc.get("/api/tasks")).raise_for_status()
                via_httpx[i].append((time.perf_counter() - start) * 1000)
        for (prefix, _), samples in zip(servers, via_httpx, strict=True):
            results.append(
                Result(
                    prefix + "list: first page, httpx client", pct(samples, 0.5),
                    pct(samples, 0.99), n, note="same request; client overhead included",
                )
            )  # fmt: skip
        for (prefix, _), hc in zip(servers, hcs, strict=True):
            results.append(await append_throughput(hc, agent, prefix))


async def measure_cold(
    servers: list[tuple[str, int]],
    clients: list[KeepAliveClient],
    get: Callable[[KeepAliveClient, str, dict[str, Any] | None], Awaitable[bytes]],
    setup: Setup,
    results: list[Result],
) -> None:
    """The first request of new q's (`COLD_NEEDLES`): per class, the p50 of their cold
    requests and of each one's ratio to a count(*) of the same filter timed right before
    it. The servers take turns going first (the first one reads the heap pages into
    shared buffers for the other)."""
    for kind, needles in COLD_NEEDLES.items():
        ms: list[list[float]] = [[] for _ in clients]
        ratios: list[list[float]] = [[] for _ in clients]
        counts = []
        wrong = []
        for turn, needle in enumerate(needles):
            case = ListCase(needle, {"q": needle}, f"WHERE input_message ILIKE '%{needle}%'")
            count_ms = await setup.time_count(case)
            counts.append(count_ms)
            totals: list[int] = []
            order = list(range(len(clients)))
            if turn % 2:
                order.reverse()
            for i in order:
                start = time.perf_counter()
                body = await get(clients[i], "/api/tasks", case.params)
                ms[i].append((time.perf_counter() - start) * 1000)
                ratios[i].append(ms[i][-1] / count_ms)
                totals.append(json.loads(body)["total"])
            truth = await setup.count(case)
            wrong += [f"{needle}: {t:,} != count(*) {truth:,}" for t in totals if t != truth]
        name = f"q {kind}, cold: {len(needles)} new needles"
        results.append(
            Result(f"count(*): {name}", pct(counts, 0.5), None, len(counts),
                   note="count(*) of each needle right before its cold requests, direct")
        )  # fmt: skip
        for (prefix, _), samples, xs in zip(servers, ms, ratios, strict=True):
            x = pct(xs, 0.5)
            met = x <= 1.2 if kind == "common" else pct(samples, 0.5) <= 60
            results.append(
                Result(
                    prefix + name, pct(samples, 0.5), max(samples), len(samples),
                    note=f"p50 of cold / count(*) {x:.2f}x (each needle's own count)"
                    + (f" WRONG {wrong}" if wrong else ", every total = count(*)"),
                    target=COLD_TARGETS[kind], met=met, naive=f"count(*): {name}",
                )
            )  # fmt: skip


async def baseline(setup: Setup, results: list[Result]) -> None:
    """The naive query (OFFSET paging plus count(*)) for every list, on the database."""
    db = await DB.connect()
    try:
        cases = [(c.name.removeprefix("list: "), c.where, 0, c.sort) for c in setup.cases]
        for depth in sorted({PAGE_DEPTH, DEPTH}):
            cases.append((f"OFFSET {depth:,}", "", depth, "created_at DESC, task_id DESC"))
        for name, where, offset, sort in cases:
            page, count = naive_sql(where, offset, sort)
            sql_args = setup.week_args if "$1" in where else []

            async def run(page: str = page, count: str = count, a: list[Any] = sql_args) -> None:
                await db.fetch(page, *a)
                await db.fetchval(count, *a)

            reps = 5
            samples = await timed(reps, run)
            results.append(
                Result(f"naive: {name}", pct(samples, 0.5), pct(samples, 0.99), reps,
                       note="OFFSET page + count(*), direct, no HTTP")
            )  # fmt: skip
    finally:
        await db.close()


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in results}

    def fmt(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else ""

    def floor_of(r: Result) -> str:
        prefix = "before: " if r.name.startswith("before: ") else ""
        floor = by_name.get(prefix + FLOOR)
        if r.name.startswith(("naive: ", "count(*): ")) or not (floor and floor.p50_ms):
            return ""
        return f"{r.p50_ms / floor.p50_ms:.1f}x" if r.p50_ms else ""

    print(
        f"\n{'measurement':<52} {'p50 ms':>8} {'p99 ms':>8} {'x floor':>7} {'n':>5}  "
        f"{'target':<28} {'naive p50':>9} {'speedup':>8}  rate / note"
    )
    print("-" * 158)
    for r in results:
        naive = by_name.get(r.naive)
        ratio = ""
        if naive and naive.p50_ms and r.p50_ms:
            ratio = f"{naive.p50_ms / r.p50_ms:,.1f}x"
        target = r.target + ("" if r.met is None else (" OK" if r.met else " MISSED"))
        tail = "  ".join(x for x in (r.rate, r.note) if x)
        print(
            f"{r.name:<52} {fmt(r.p50_ms):>8} {fmt(r.p99_ms):>8} {floor_of(r):>7} "
            f"{r.n or '':>5}  {target:<28} {fmt(naive.p50_ms if naive else None):>9} "
            f"{ratio:>8}  {tail}"
        )
    print("-" * 158)
    for prefix in ("", "before: ") if args.before_src else ("",):
        deep = by_name.get(prefix + f"list: cursor {DEPTH:,} deep")
        offset = by_name.get(f"naive: OFFSET {DEPTH:,}")
        if deep and offset and deep.p50_ms and offset.p50_ms:
            x = offset.p50_ms / deep.p50_ms
            verdict = "OK" if x >= DEEP_TARGET_X else "MISSED"
            print(
                f"{prefix or 'this code: '}cursor {DEPTH:,} deep vs OFFSET + count(*) at the same "
                f"depth: {x:,.0f}x faster (target >= {DEEP_TARGET_X:.0f}x) {verdict}"
            )
    if args.before_src:
        print("\nbefore -> after (p50 ms, same run):")
        for r in results:
            old = by_name.get("before: " + r.name)
            if old and old.rate and r.rate:
                print(f"  {r.name:<52} {old.rate:>16} -> {r.rate}")
            elif old and old.p50_ms and r.p50_ms:
                print(f"  {r.name:<52} {old.p50_ms:8.2f} -> {r.p50_ms:8.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="samples per measurement")
    parser.add_argument("--reseed", action="store_true", help="drop and seed the database again")
    parser.add_argument(
        "--tasks",
        type=int,
        default=N_TASKS,
        help="tasks seeded (default 1,000,000; fewer for a quick before/after on a shared "
        "machine, with DASHBOARD_BENCH_DB naming a database of its own)",
    )
    parser.add_argument(
        "--db",
        default=DB_NAME,
        help="the database (default $DASHBOARD_BENCH_DB or dash_bench_tasks); bench.analytics "
        "--db can measure the same one",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="postgresql",
        help="sqlite: the file /tmp/DB.sqlite3 (the embedded default)",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the warm latencies beside the floor (no cold q needles, naive baseline, "
        "throughput or appends: at 10M tasks those take most of an hour)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2],
        help="uvicorn worker counts for the 32-connection throughput (default 1,2)",
    )
    parser.add_argument(
        "--before-src",
        help="a checkout (e.g. `git worktree` of the previous commit) to measure in the same run",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
