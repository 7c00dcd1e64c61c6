"""Buffers per request: what each list, detail and analytics request reads in PostgreSQL.

Run: `.venv/bin/python -m bench.plans --db NAME [--case TEXT] [--explain]` on a database
bench.tasks_api or bench.analytics seeded (see bench/README.md, "Growth").
The app runs in this process (ASGI, no socket); every statement a request sends is
recorded, then run again under EXPLAIN (ANALYZE, BUFFERS) with the same parameters, and
the request is reported as the sum of its statements' shared buffers (hit + read) and
execution times, after a warm-up request (the per-process count caches filled). Buffers
do not move with the load of a shared machine as milliseconds do: at 100k, 1M and 10M
tasks they show which requests read more as the table grows, and `--explain` prints the
plans of those.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import event

from bench._common import cli, connect, db_url, log


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

    url = db_url(args.db)
    env = {**os.environ, "DASHBOARD_DATABASE_URL": url, "DASHBOARD_LOG_LEVEL": "WARNING"}
    env.pop("DASHBOARD_REDIS_URL", None)
    token = cli("token", "create", "--user", "bench", "--role", "user", env=env).split()[-1]
    db = await connect(args.db)
    try:
        n = int(await db.fetchval("SELECT reltuples::bigint FROM pg_class WHERE relname='tasks'"))
        row = await db.fetchrow(
            "SELECT created_at, task_id FROM tasks ORDER BY created_at DESC, task_id DESC "  # noqa: S608
            f"OFFSET {n // 2} LIMIT 1"
        )
    finally:
        await db.close()
    deep = encode_cursor(ORDERINGS["-created_at"], [row["created_at"], row["task_id"]])
    settings = Settings(_env_file=None, database_url=url, redis_url=None, log_level="WARNING")
    app = create_app(settings)
    async with LifespanManager(app):
        engine = app.state.ctx.db.engine.sync_engine

        @event.listens_for(engine, "before_cursor_execute")
        def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: Any) -> None:
            req = _MEASURED.get()
            if req is not None:
                req.statements.append(Statement(sql, params))

        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers,
                                     timeout=600) as client:  # fmt: skip
            print(f"{'request':<30} {'buffers':>9} {'exec ms':>9} {'stmts':>5}  ({n:,} tasks)")
            # reltuples is an estimate: the page 10,001 of 1M tasks (1,001 of 100k).
            page = min(10_001, round(n, -3) // 100 + 1)
            for name, path, params in cases(deep, page, row["task_id"]):
                if args.case and args.case not in name:
                    continue
                (await client.get(path, params=params)).raise_for_status()  # warm the caches
                req = Request(name, path, params)
                token_ = _MEASURED.set(req)
                (await client.get(path, params=params)).raise_for_status()
                _MEASURED.reset(token_)
                await report(app.state.ctx.db.engine, req, args.explain)
    return 0


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
    return parser.parse_args()


if __name__ == "__main__":
    log("bench.plans")
    raise SystemExit(asyncio.run(main(parse_args())))
