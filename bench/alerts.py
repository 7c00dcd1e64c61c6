"""Alert evaluation and budgets at fleet scale, in PostgreSQL.

Run: `.venv/bin/python -m bench.alerts [--tasks 1000000] [--rounds 20] [--reseed]
[--before-src DIR] [--drop]`. It creates (or reuses) its own database `alerts_bench_N`
(N tasks), seeds it with `dashboard-api seed` (90 days, rollups included), adds 100 alert
rules of every kind (windows of 5 minutes to a day, scoped and not) and 20 budgets
(rollup and index-range scopes), then times, as of the newest seeded task (so that the
short windows hold tasks, as in a live fleet), in a process of its own
(`bench/_alerts_worker.py`):

- one evaluation round of the 100 rules (`services.alerts.evaluate.evaluate_rules`:
  the fold check, every rule measured, no transition); target <= 100 ms at 1M tasks;
- one round of the budgets job (every budget's exact spend, nothing to announce);
- the floor: one `SELECT 1` round trip on the same pool, so that figures read as ratios
  on a shared machine.

With `--before-src DIR` (another checkout's `src`) a second process times that code on
the same database, the two alternating call by call. `--drop` drops the database at the
end (it is kept by default, for the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from bench._common import cli, connect, db_url, drop_db, log, pct, recreate_db, task_count

TARGET_MS = 100.0
KINDS_FROM_ROLLUPS = ("failure_rate", "cost_usd", "duration_p95_seconds")
OTHER_KINDS = (
    "agent_offline",
    "lease_expired",
    "webhook_signature_failures",
    "oauth_expiring",
    "index_job_failed",
    "budget",
)
WHAT = {
    "floor": "SELECT 1 (floor)",
    "rules": "rules round, 100 rules",
    "budgets": "budgets round, 20 budgets",
}


def rules() -> list[dict[str, Any]]:
    """100 rules: 85 over the rollups (every scope shape, windows 5 min .. 1 day) and 15
    counts and reads of the other six kinds (windows of 15 minutes to a day, scoped and
    not)."""
    from dashboard_api.services.seed_data import AGENT_TYPES, SOURCES

    out: list[dict[str, Any]] = []
    windows = (5, 15, 60, 240, 1440)
    scopes: list[dict[str, str]] = [{}]
    scopes += [{"agent_type": a} for a in AGENT_TYPES]
    scopes += [{"source": s} for s in SOURCES]
    scopes += [{"agent_type": a, "source": s} for a in AGENT_TYPES[:2] for s in SOURCES[:2]]
    i = 0
    while len(out) < 85:
        kind = KINDS_FROM_ROLLUPS[i % 3]
        scope = scopes[i % len(scopes)]
        threshold = {"failure_rate": 0.99, "cost_usd": 1e9, "duration_p95_seconds": 1e9}[kind]
        out.append(
            {
                "kind": kind,
                "scope": scope,
                "window_minutes": windows[i % len(windows)],
                "threshold": threshold,
            }
        )
        i += 1
    j = 0
    while len(out) < 100:
        kind = OTHER_KINDS[j % len(OTHER_KINDS)]
        out.append(
            {
                "kind": kind,
                "scope": scopes[j % 3],
                "window_minutes": (15, 60, 1440)[j % 3],
                "threshold": 1e9 if kind != "oauth_expiring" else 0,
            }
        )
        j += 1
    return out


def budgets() -> list[dict[str, Any]]:
    from dashboard_api.services.seed_data import AGENT_TYPES, SOURCES

    out: list[dict[str, Any]] = [{"scope": {}, "period": p} for p in ("day", "week", "month")]
    out += [{"scope": {"agent_type": a}, "period": "month"} for a in AGENT_TYPES]
    out += [{"scope": {"source": s}, "period": "week", "tz": "Europe/Paris"} for s in SOURCES]
    out += [{"scope": {"user_id": f"user-{i}"}, "period": "month"} for i in range(1, 4)]
    out += [
        {
            "scope": {"user_id": "user-1", "agent_type": AGENT_TYPES[0]},
            "period": "day",
            "tz": "America/New_York",
        }
    ]
    out += [{"scope": {"flow_id": "flow-1"}, "period": "month"}]
    return out[:20]


async def define(db: Any, now: Any) -> None:
    from sqlalchemy import delete

    from dashboard_api.db.models import Alert, AlertRule, Budget
    from dashboard_api.schemas.alerts import RuleIn
    from dashboard_api.schemas.budgets import BudgetIn
    from dashboard_api.services.alerts.rules import put_rule
    from dashboard_api.services.budgets.service import put_budget

    async with db.write() as session:
        for table in (Alert, AlertRule, Budget):
            await session.execute(delete(table))
        for i, r in enumerate(rules()):
            await put_rule(session, rule_id=f"r{i:03d}", body=RuleIn(name=f"r{i}", **r), now=now)
        for i, b in enumerate(budgets()):
            body = BudgetIn(name=f"b{i}", limit_usd=1e9, **b)
            await put_budget(session, budget_id=f"b{i:02d}", body=body, now=now)


class Worker:
    """A `bench/_alerts_worker.py` process importing `dashboard_api` from `src`."""

    def __init__(self, name: str, src: Path, url: str, now: datetime) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(src), "DASHBOARD_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._alerts_worker", "--url", url, "--now", now.isoformat()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        ready = self._read()
        log(f"{name}: dashboard_api from {Path(ready['ready']).parent}")

    def _read(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker ended (exit {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, what: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def seed(args: argparse.Namespace, name: str, env: dict[str, str]) -> None:
    count = await task_count(name)
    if not args.reseed and count == args.tasks:
        log(f"reusing {name} ({count:,} tasks)")
        cli("migrate", env=env)
        return
    log(f"seeding {args.tasks:,} tasks into {name} ...")
    await recreate_db(name)
    cli("migrate", env=env)
    started = time.perf_counter()
    cli("seed", "--tasks", str(args.tasks), "--days", "90", "--random-seed", "1", env=env)
    log(f"seeded in {time.perf_counter() - started:.0f} s")
    conn = await connect(name)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def newest_task(name: str) -> datetime:
    conn = await connect(name)
    try:
        newest: datetime = await conn.fetchval("SELECT max(created_at) FROM tasks")
    finally:
        await conn.close()
    return newest


def measure(workers: list[Worker], rounds: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each call of each worker, `rounds` times after a warm-up, the workers alternating
    call by call (and which goes first, round by round)."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for what in ("floor", "rules", "budgets"):
        for w in workers:
            w.call(what)  # warm-up: plans, caches, connections
        for i in range(rounds):
            for w in workers if i % 2 == 0 else workers[::-1]:
                samples.setdefault((w.name, what), []).append(w.call(what))
    return samples


def report(
    args: argparse.Namespace, names: list[str], samples: dict[tuple[str, str], list[dict[str, Any]]]
) -> None:
    def p50(name: str, what: str) -> float:
        return float(statistics.median(s["ms"] for s in samples[(name, what)]))

    print(f"\n{args.tasks:,} tasks, 100 rules, 20 budgets, {args.rounds} rounds each (ms)\n")
    head = "".join(
        f" {n + ' p50':>12} | {n + ' p90':>12} | {'x floor':>8} | {'stmts':>5} |" for n in names
    )
    ratio = f" {'after/before':>12} |" if len(names) == 2 else ""
    print(f"| {'what':<26} |{head}{ratio}")
    print(
        "|"
        + "-" * 28
        + "|"
        + "|".join("-" * w for n in names for w in (14, 14, 10, 7))
        + "|"
        + ("-" * 14 + "|" if ratio else "")
    )
    for what in ("floor", "rules", "budgets"):
        cells = ""
        for n in names:
            ms = [s["ms"] for s in samples[(n, what)]]
            stmts = samples[(n, what)][-1]["statements"]
            floor = p50(n, what) / p50(n, "floor")
            cells += f" {p50(n, what):12.1f} | {pct(ms, 0.9):12.1f} | {floor:8.1f} | {stmts:5d} |"
        if ratio:
            cells += f" {p50(names[1], what) / p50(names[0], what):12.2f} |"
        print(f"| {WHAT[what]:<26} |{cells}")
    rules_p50 = p50(names[-1], "rules")
    verdict = "met" if rules_p50 <= TARGET_MS else "MISSED"
    print(f"\nrules round p50 {rules_p50:.1f} ms: target <= {TARGET_MS:.0f} ms {verdict}")


async def main(args: argparse.Namespace) -> int:
    from dashboard_api.db.engine import Database

    name = args.db or f"alerts_bench_{args.tasks}"
    url = db_url(name)
    env = {**os.environ, "DASHBOARD_DATABASE_URL": url, "DASHBOARD_LOG_LEVEL": "WARNING"}
    await seed(args, name, env)
    now = await newest_task(name)
    db = Database(url)
    try:
        await define(db, now)
    finally:
        await db.dispose()
    here = Path(__file__).resolve().parent.parent / "src"
    variants = [("after", here)]
    if args.before_src:
        variants.insert(0, ("before", Path(args.before_src).resolve()))
    workers: list[Worker] = []
    try:
        for variant, src in variants:
            workers.append(Worker(variant, src, url, now))
        samples = measure(workers, args.rounds)
    finally:
        for w in workers:
            w.close()
        if args.drop:
            await drop_db(name)
    report(args, [w.name for w in workers], samples)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reseed", action="store_true", help="drop the database and seed again")
    parser.add_argument("--db", help="database name (default alerts_bench_N for N tasks)")
    parser.add_argument("--before-src", help="also time another checkout's src (before/after)")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
