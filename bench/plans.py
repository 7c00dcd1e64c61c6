"""Buffers per request: what each list, detail and analytics request reads in PostgreSQL;
on SQLite, the CPU of each request's statements and of the request in process.

Run: `.venv/bin/python -m bench.plans --db NAME [--case TEXT] [--explain]` on a database
bench.tasks_api or bench.analytics seeded (see bench/README.md, "Growth"); with
`--backend sqlite` on the file /tmp/NAME.sqlite3 (`dashboard-api seed`).
The app runs in this process (ASGI, no socket); every statement a request sends is
recorded, then run again under EXPLAIN (ANALYZE, BUFFERS) with the same parameters, and
the request is reported as the sum of its statements' shared buffers (hit + read) and
execution times, after a warm-up request (the per-process count caches filled). Buffers
do not move with the load of a shared machine as milliseconds do: at 100k, 1M and 10M
tasks they show which requests read more as the table grows, and `--explain` prints the
plans of those.

SQLite has no buffer counts: each request's statements are run again on a connection
of the standard library's driver (the service's page cache and memory map, `--cache-mb`,
`--mmap-mb`), and reported
as their CPU time (`time.process_time`, which the load of a shared machine barely
moves), median of `--rounds` after a warm-up; beside it the whole request in this
process (CPU and wall, the app's own connections), and the file reads the request made
through the operating system (read calls, from /proc/self/io; pages its page cache did
not hold). `--explain` prints the statements' query plans.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextvars
import json
import os
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import event

from bench._bench_db import BenchDB
from bench._common import cli, connect, log
from bench._plan_cpu import HEADER, report_cpu
from dashboard_api.db.dialect.pg_pool import GENERIC_PLAN_SETTINGS


@dataclass
class Statement:
    sql: str
    params: Any


@dataclass
class Request:
    name: str
    path: str
    params: dict[str, Any]
    statements: list[Statement] = field(default_factory=list)


# Set while a measured request runs: the app's background jobs (folds, sweeps) run in
# tasks of their own, whose statements are not the request's.
_MEASURED: contextvars.ContextVar[Request | None] = contextvars.ContextVar("measured", default=None)


def cases(deep_cursor: str, page: int, task_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    now = datetime.now(UTC)
    week = {
        "created_after": (now - timedelta(days=7)).isoformat(),
        "created_before": now.isoformat(),
    }
    d30 = {"from": (now - timedelta(days=30)).isoformat(), "to": now.isoformat()}
    d365 = {"from": (now - timedelta(days=365)).isoformat(), "to": now.isoformat()}
    forever = {"from": "2000-01-01T00:00:00Z", "to": now.isoformat()}
    tasks = "/api/tasks"
    return [
        ("first page", tasks, {}),
        ("status=failed", tasks, {"status": "failed"}),
        ("agent_type=reviewer", tasks, {"agent_type": "reviewer"}),
        ("source=slack", tasks, {"source": "slack"}),
        ("created 7 days", tasks, week),
        ("flow_id", tasks, {"flow_id": "flow-17"}),
        ("user_id", tasks, {"user_id": "user-7"}),
        ("status+agent+7 days", tasks,
         {"status": "completed", "agent_type": "claude-code", **week}),
        ("q common", tasks, {"q": "payments"}),
        ("q rare", tasks, {"q": "flaky job #12"}),
        # 10x rarer: at 10M tasks about as many matches as "flaky job #12" at 1M.
        ("q rare, 10x rarer", tasks, {"q": "flaky job #123"}),
        ("q common + 7 days", tasks, {"q": "payments", **week}),
        ("sort=-cost_usd", tasks, {"sort": "-cost_usd"}),
        ("cursor half deep", tasks, {"cursor": deep_cursor}),
        (f"page {page:,}", tasks, {"page": page}),
        ("task detail", f"{tasks}/{task_id}", {}),
        ("summary 30 d", "/api/analytics/summary", d30),
        ("summary all time", "/api/analytics/summary", forever),
        ("histogram 30 d hour", "/api/analytics/costs/histogram", {**d30, "period": "hour"}),
        ("histogram 365 d day", "/api/analytics/costs/histogram", {**d365, "period": "day"}),
        ("histogram 365 d day NY", "/api/analytics/costs/histogram",
         {**d365, "period": "day", "tz": "America/New_York"}),
        ("histogram 30 d hour Kolkata", "/api/analytics/costs/histogram",
         {**d30, "period": "hour", "tz": "Asia/Kolkata"}),
        ("performance 30 d", "/api/analytics/performance", d30),
        ("performance 30 d reviewer", "/api/analytics/performance",
         {**d30, "agent_type": "reviewer"}),
    ]  # fmt: skip


def _buffers(plan: dict[str, Any]) -> int:
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


async def main(args: argparse.Namespace) -> int:
    from dashboard_api.app import create_app
    from dashboard_api.db.paging import encode_cursor
    from dashboard_api.services.tasks import ORDERINGS
    from dashboard_api.settings import Settings

    sqlite = args.backend == "sqlite"
    url = BenchDB(args.backend, args.db).url
    env = {**os.environ, "DASHBOARD_DATABASE_URL": url, "DASHBOARD_LOG_LEVEL": "WARNING"}
    env.pop("DASHBOARD_REDIS_URL", None)
    token = cli("token", "create", "--user", "bench", "--role", "user", env=env).split()[-1]
    n, deep_row = await (_sqlite_middle(args.db) if sqlite else _pg_middle(args.db))
    deep = encode_cursor(ORDERINGS["-created_at"], list(deep_row))
    settings = Settings(
        _env_file=None,
        database_url=url,
        redis_url=None,
        log_level="WARNING",
        **({"sqlite_cache_mb": args.cache_mb} if args.cache_mb else {}),
        **({"sqlite_mmap_mb": args.mmap_mb} if args.mmap_mb is not None else {}),
    )
    app = create_app(settings)
    async with LifespanManager(app):

        def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: Any) -> None:
            req = _MEASURED.get()
            if req is not None:
                req.statements.append(Statement(sql, params))

        for engine in app.state.ctx.db.engines:  # analytics reads run on their own
            event.listen(engine.sync_engine, "before_cursor_execute", record)

        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers,
                                     timeout=600) as client:  # fmt: skip
            if sqlite:
                print(
                    f"{'request':<30} {'stmt CPU ms':>11} {'req CPU ms':>10} {'req wall ms':>11} "
                    f"{'OS reads':>8} {'stmts':>5}  ({n:,} tasks, "
                    f"cache {settings.sqlite_cache_mb} MB, mmap {settings.sqlite_mmap_mb} MB)"
                )
            elif args.cpu:
                print(HEADER + f"  ({n:,} tasks, {args.rounds} x {args.requests} requests)")
            else:
                print(f"{'request':<30} {'buffers':>9} {'exec ms':>9} {'stmts':>5}  ({n:,} tasks)")
            # reltuples is an estimate: the page 10,001 of 1M tasks (1,001 of 100k).
            page = min(10_001, round(n, -3) // 100 + 1)
            for name, path, params in cases(deep, page, deep_row[1]):
                if args.case and args.case not in name:
                    continue
                (await client.get(path, params=params)).raise_for_status()  # warm the caches
                if args.cpu:
                    await report_cpu(
                        app, client, args.db, name, path, params,
                        rounds=args.rounds, requests=args.requests,
                    )  # fmt: skip
                    continue
                req = Request(name, path, params)
                token_ = _MEASURED.set(req)
                (await client.get(path, params=params)).raise_for_status()
                _MEASURED.reset(token_)
                if sqlite:
                    timed = await _in_process(client, path, params, args.rounds)
                    _report_sqlite(args, settings, req, timed)
                elif args.generic:
                    await report_generic(app.state.ctx.db.engine, req, args.explain)
                else:
                    await report(app.state.ctx.db.engine, req, args.explain)
    return 0


async def _pg_middle(name: str) -> tuple[int, tuple[Any, str]]:
    """The tasks (estimated) and the (created_at, task_id) half of them deep."""
    db = await connect(name)
    try:
        n = int(await db.fetchval("SELECT reltuples::bigint FROM pg_class WHERE relname='tasks'"))
        row = await db.fetchrow(
            "SELECT created_at, task_id FROM tasks ORDER BY created_at DESC, task_id DESC "  # noqa: S608
            f"OFFSET {n // 2} LIMIT 1"
        )
    finally:
        await db.close()
    return n, (row["created_at"], row["task_id"])


async def _sqlite_middle(name: str) -> tuple[int, tuple[Any, str]]:
    db = sqlite3.connect(BenchDB("sqlite", name).path)
    try:
        n = int(db.execute("SELECT count(*) FROM tasks").fetchone()[0])
        created, task_id = db.execute(
            "SELECT created_at, task_id FROM tasks ORDER BY created_at DESC, task_id DESC "
            "LIMIT 1 OFFSET ?",
            (n // 2,),
        ).fetchone()
    finally:
        db.close()
    return n, (datetime.fromisoformat(created).replace(tzinfo=UTC), task_id)


def _os_reads() -> int:
    """Read calls this process made so far (`syscr`: SQLite reads a page per call)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscr"))


async def _in_process(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], rounds: int
) -> tuple[float, float, float]:
    """Median CPU ms, wall ms and read calls of the request, served in this process."""
    cpu, wall, reads = [], [], []
    for _ in range(rounds):
        r0, c0, w0 = _os_reads(), time.process_time(), time.perf_counter()
        (await client.get(path, params=params)).raise_for_status()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        reads.append(_os_reads() - r0)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3, statistics.median(reads)


def _report_sqlite(
    args: argparse.Namespace, settings: Any, req: Request, timed: tuple[float, float, float]
) -> None:
    from dashboard_api.db.dialect.sqlite_connection import casefold
    from dashboard_api.services.analytics.layout import BIN_THRESHOLDS

    db = sqlite3.connect(BenchDB("sqlite", args.db).path)
    db.execute(f"PRAGMA cache_size=-{settings.sqlite_cache_mb * 1024}")
    db.execute(f"PRAGMA mmap_size={settings.sqlite_mmap_mb * 1024 * 1024}")
    db.create_function("dashboard_casefold", 1, casefold)
    db.create_function(
        "dashboard_log_bin",
        1,
        lambda v: None if v is None else bisect.bisect_right(BIN_THRESHOLDS, v),
    )
    reads = [st for st in req.statements if st.sql.lstrip().upper().startswith(("SELECT", "WITH"))]
    try:
        for st in reads:  # warm-up
            db.execute(st.sql, st.params or ()).fetchall()
        cpu = []
        for _ in range(args.rounds):
            c0 = time.process_time()
            for st in reads:
                db.execute(st.sql, st.params or ()).fetchall()
            cpu.append(time.process_time() - c0)
        print(
            f"{req.name:<30} {statistics.median(cpu) * 1e3:>11.2f} {timed[0]:>10.2f} "
            f"{timed[1]:>11.2f} {timed[2]:>8,.0f} {len(reads):>5}",
            flush=True,
        )
        if args.explain:
            for st in reads:
                print("  SQL:", " ".join(st.sql.split())[:400])
                for row in db.execute("EXPLAIN QUERY PLAN " + st.sql, st.params or ()):
                    print("   ", row[-1])
    finally:
        db.close()


async def report(engine: Any, req: Request, explain: bool) -> None:
    total_buffers, total_ms = 0, 0.0
    plans = []
    async with engine.connect() as conn:
        for st in req.statements:
            if not st.sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            raw = await conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + st.sql, st.params
            )
            doc = raw.scalar_one()
            doc = json.loads(doc) if isinstance(doc, str) else doc
            top = doc[0]
            total_buffers += _buffers(top["Plan"])  # planning reads the catalog: noise
            total_ms += float(top["Execution Time"])
            plans.append((st.sql, top))
    print(f"{req.name:<30} {total_buffers:>9,} {total_ms:>9.2f} {len(plans):>5}", flush=True)
    if explain:
        for sql, top in plans:
            print("  SQL:", " ".join(sql.split())[:400])
            print(_text(top["Plan"], 2))


# PostgreSQL plans a prepared statement per execution (a custom plan, parameters folded
# in) until a generic plan (planned once per connection) looks no costlier than the
# custom plans' average; `plan_cache_mode` forces either. The service's statements are
# prepared by the driver, so a generic plan saves each request its planning time.
_GENERIC_WARMUP = 6  # executions before the plan cache builds a generic plan
_PLAN_ROUNDS = 5


def _literal(value: Any) -> str:
    """A bound value written as SQL for EXECUTE (which takes no parameters): untyped
    text that PostgreSQL reads as the prepared statement's parameter type."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, list | tuple):
        items = ",".join(
            "NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in value
        )
        text = "{" + items + "}"
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    return "'" + text.replace("'", "''") + "'"


async def report_generic(engine: Any, req: Request, explain: bool) -> None:
    """Each statement of the request under a custom plan and under the generic plan:
    planning and execution ms (median of _PLAN_ROUNDS EXPLAIN EXECUTE), buffers."""
    async with engine.connect() as conn:
        apg = (await conn.get_raw_connection()).driver_connection
        for i, st in enumerate(req.statements):
            if not st.sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            params = tuple(st.params or ())
            name = f"bench_plan_{i}"
            args = ", ".join(_literal(v) for v in params)
            execute = f"EXECUTE {name}" + (f"({args})" if params else "")
            await apg.execute(f"PREPARE {name} AS {st.sql}")
            try:
                figures = {}
                # the main pool's connections, then the analytics pool's settings
                for settings in ({"plan_cache_mode": "force_custom_plan"}, GENERIC_PLAN_SETTINGS):
                    for setting, value in settings.items():
                        await apg.execute(f"SET {setting} = {value}")
                    for _ in range(_GENERIC_WARMUP):
                        await apg.fetch(execute)
                    tops = []
                    for _ in range(_PLAN_ROUNDS):
                        doc = await apg.fetchval(
                            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + execute
                        )
                        tops.append((json.loads(doc) if isinstance(doc, str) else doc)[0])
                    figures[settings["plan_cache_mode"]] = (
                        statistics.median(float(t.get("Planning Time", 0.0)) for t in tops),
                        statistics.median(float(t["Execution Time"]) for t in tops),
                        _buffers(tops[-1]["Plan"]),
                        tops[-1],
                    )
            finally:
                await apg.execute(f"DEALLOCATE {name}")
                for setting in GENERIC_PLAN_SETTINGS:
                    await apg.execute(f"RESET {setting}")
            (cp, ce, cb, ctop), (gp, ge, gb, gtop) = figures.values()
            print(
                f"{req.name:<30} #{i} custom plan {cp:.3f} + exec {ce:.3f} ms, {cb:,} buffers"
                f" | generic plan {gp:.3f} + exec {ge:.3f} ms, {gb:,} buffers",
                flush=True,
            )
            if explain:
                print("  SQL:", " ".join(st.sql.split())[:400])
                print("  custom:\n" + _text(ctop["Plan"], 4))
                print("  generic:\n" + _text(gtop["Plan"], 4))


def _text(node: dict[str, Any], depth: int) -> str:
    what = node["Node Type"]
    for k in ("Index Name", "Relation Name", "CTE Name"):
        if k in node:
            what += f" {node[k]}"
    line = (
        " " * depth + f"-> {what} rows={node.get('Actual Rows')} loops={node.get('Actual Loops')}"
        f" buffers={_buffers(node):,} ms={node.get('Actual Total Time')}"
    )
    kids = [_text(k, depth + 2) for k in node.get("Plans", [])]
    return "\n".join([line, *kids])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True, help="a seeded database")
    parser.add_argument("--case", help="only the requests whose name contains this")
    parser.add_argument("--explain", action="store_true", help="print each statement's plan")
    parser.add_argument(
        "--backend", choices=("postgresql", "sqlite"), default="postgresql",
        help="sqlite: the file /tmp/DB.sqlite3; CPU per request instead of buffers",
    )  # fmt: skip
    parser.add_argument(
        "--generic", action="store_true",
        help="PostgreSQL: each statement's custom plan against its generic plan",
    )  # fmt: skip
    parser.add_argument(
        "--cpu", action="store_true",
        help="PostgreSQL: app and database CPU per request, generic against custom plans "
        "for the analytics reads (--rounds rounds of --requests)",
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=100, help="--cpu: requests per round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="SQLite, --cpu: timed runs per request"
    )
    parser.add_argument(
        "--cache-mb", type=int, help="SQLite: the page cache per connection (the setting's default)"
    )
    parser.add_argument("--mmap-mb", type=int, help="SQLite: the memory map per connection")
    return parser.parse_args()


if __name__ == "__main__":
    log("bench.plans")
    raise SystemExit(asyncio.run(main(parse_args())))
