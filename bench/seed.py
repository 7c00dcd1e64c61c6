"""Seeding through the CLI against a plain SQL insert of the same volume; size per task.

    python -m bench.seed [--tasks 1000000] [--days 90] [--rounds 1] [--before-src DIR]
                         [--naive-baseline] [--keep] [--json FILE]

Fresh, migrated PostgreSQL databases of its own (`seed_bench_sql`, `seed_bench_cli`,
`seed_bench_before`; dropped at the end unless `--keep`):

- Baseline: one transaction of two `INSERT … SELECT … FROM generate_series(1, N)`
  statements, the tasks (the seed's mix of statuses, agent types, sources, models and
  prompts) and their status events (queued, running when started, the end state when
  ended), into the migrated schema. By default the secondary indexes and the foreign key
  are dropped first and built after, as the seed does (what the database alone needs to
  store the same rows with the same indexes); `--naive-baseline` inserts with every
  index in place. No rollups.
- CLI: `dashboard-api seed --tasks N --days D` in a process of its own, timed from its
  start to its exit (imports, generation, COPY, index builds, the analytics rollups); its
  CPU time and peak resident memory from the kernel (`ru_*` of the waited-for child).
  With `--before-src DIR`, another checkout's CLI (`DIR/src` first on PYTHONPATH) seeds
  too, the two taking turns for `--rounds` rounds.

Reported: each seed's time ÷ the baseline's, CPU and peak RSS, and the last CLI
database's size after `VACUUM ANALYZE`: bytes per task of the whole database, of each
table (heap, TOAST and indexes) and of each index of `tasks`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench._common import BIN, connect, db_url, drop_db, log, recreate_db

TASKS = 1_000_000
DAYS = 90

BASELINE_TASKS = """
INSERT INTO tasks (
    task_id, status, agent_type, assigned_agent, source, input_message, result, error,
    user_id, flow_id, model, cost_micros, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, duration_us, created_at, started_at, completed_at, updated_at,
    first_output_at, metadata, failure_reason, cost_reported, cancel_requested, output_seq,
    output_bytes, output_truncated)
SELECT id, status, agent_type, CASE WHEN started IS NOT NULL THEN agent_type || '-1' END,
       source, prompt,
       CASE WHEN status = 'completed' THEN 'Done: opened a pull request with the fix.' END,
       CASE WHEN status = 'failed' THEN 'Agent exceeded its tool-call budget.' END,
       'user-' || (1 + i % 40), CASE WHEN i % 10 < 3 THEN 'flow-' || (1 + i % 5000) END,
       model, tokens * 3, tokens, tokens / 8, tokens, tokens / 10,
       CASE WHEN ended IS NOT NULL AND started IS NOT NULL
            THEN (extract(epoch FROM ended - started) * 1e6)::bigint END,
       created, started, ended, coalesce(ended, started, created),
       started + interval '2 seconds', '{}'::json,
       CASE WHEN status = 'failed' THEN 'agent' END, false, false, 0, 0, false
FROM (
    SELECT i, id, created, status, agent_type, source, model, prompt, tokens,
           CASE WHEN status <> 'queued' THEN created + interval '8 seconds' END AS started,
           CASE WHEN status IN ('completed', 'failed', 'cancelled')
                THEN created + (random() * interval '20 minutes') END AS ended
    FROM (
        SELECT i,
               lpad(to_hex(i), 12, '0') || '-seed-baseline' AS id,
               now() - interval '1 day' * $2 * (1 - i::float8 / $1) AS created,
               CASE WHEN i > $1 - 10 THEN 'running'
                    WHEN r < 0.84 THEN 'completed'
                    WHEN r < 0.97 THEN 'failed' ELSE 'cancelled' END AS status,
               (ARRAY['claude-code', 'reviewer', 'triage', 'docs-writer', 'test-fixer',
                      'planner'])[1 + floor(random() * 6)::int] AS agent_type,
               (ARRAY['github', 'jira', 'slack', 'dashboard', 'api'])
                   [1 + floor(random() * 5)::int] AS source,
               (ARRAY['claude-sonnet-4', 'claude-opus-4', 'claude-haiku-4', 'gpt-5',
                      'gpt-5-mini'])[1 + floor(random() * 5)::int] AS model,
               format((ARRAY['Fix the failing test in %s (%s assertions)',
                             'Review pull request #%2$s in %1$s',
                             'Investigate flaky job #%2$s on main of %1$s',
                             'Write docs for the %s CLI flags'])[1 + floor(random() * 4)::int],
                      (ARRAY['acme/web', 'acme/api', 'acme/mobile', 'acme/infra',
                             'acme/payments', 'acme/search'])[1 + floor(random() * 6)::int],
                      2 + (random() * 9997)::int) AS prompt,
               (exp(9.5 + random() * 2))::bigint AS tokens
        FROM (SELECT i, random() AS r FROM generate_series(1, $1) AS i) AS g
    ) AS drawn
) AS timed
"""

BASELINE_EVENTS = """
INSERT INTO task_events (task_id, type, status, at)
SELECT task_id, 'status', 'queued', created_at FROM tasks
UNION ALL
SELECT task_id, 'status', 'running', started_at FROM tasks WHERE started_at IS NOT NULL
UNION ALL
SELECT task_id, 'status', status, completed_at FROM tasks WHERE completed_at IS NOT NULL
"""

DROPPABLE_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i WHERE i.indrelid = ANY($1::regclass[])
AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""
FOREIGN_KEYS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY($1::regclass[])
"""

SIZES = """
SELECT c.relname, c.relkind::text, coalesce(t.relname, c.relname), pg_total_relation_size(c.oid),
       pg_relation_size(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class t ON t.oid = i.indrelid
WHERE c.relkind IN ('r', 'i')
"""


@dataclass
class SeedRun:
    label: str
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    tasks: int
    sizes: dict[str, Any] = field(default_factory=dict)


def _env(database: str, src: str | None = None) -> dict[str, str]:
    env = {**os.environ, "DASHBOARD_DATABASE_URL": db_url(database)}
    env["DASHBOARD_LOG_LEVEL"] = "WARNING"
    env.pop("DASHBOARD_REDIS_URL", None)
    if src:
        env["PYTHONPATH"] = str(Path(src) / "src")
    return env


async def _fresh(database: str, env: dict[str, str]) -> None:
    await recreate_db(database)
    subprocess.run(
        [str(BIN / "dashboard-api"), "migrate"], env=env, check=True, capture_output=True
    )


async def seed_with_cli(
    label: str, database: str, args: argparse.Namespace, src: str | None
) -> SeedRun:
    env = _env(database, src)
    await _fresh(database, env)
    cmd = [str(BIN / "python"), "-m", "dashboard_api.cli", "seed", "--tasks", str(args.tasks)]
    cmd += ["--days", str(args.days), "--random-seed", "1"]
    log(f"{label}: seeding {args.tasks:,} tasks into {database} ...")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label}: the seed failed:\n{err.decode()}")
    log(f"{label}: {out.decode().strip()} (wall {seconds:.1f} s)")
    tasks = await _count(database)
    cpu = usage.ru_utime + usage.ru_stime
    return SeedRun(label, seconds, cpu, usage.ru_maxrss / 1024, tasks)


async def seed_with_sql(database: str, args: argparse.Namespace) -> SeedRun:
    await _fresh(database, _env(database))
    how = "indexes in place" if args.naive_baseline else "indexes and foreign key built after"
    log(f"baseline: INSERT … SELECT generate_series of {args.tasks:,} tasks ({how}) ...")
    conn = await connect(database)
    try:
        start = time.perf_counter()
        async with conn.transaction():
            rebuild = [] if args.naive_baseline else await _drop_indexes(conn)
            await conn.execute(BASELINE_TASKS, args.tasks, float(args.days))
            await conn.execute(BASELINE_EVENTS)
            await conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for statement in rebuild:
                await conn.execute(statement)
        seconds = time.perf_counter() - start
    finally:
        await conn.close()
    return SeedRun("baseline", seconds, 0.0, 0.0, await _count(database))


async def _drop_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop the secondary indexes and foreign keys of tasks and task_events, as the seed
    does; the statements that put them back."""
    tables = ["tasks", "task_events"]
    indexes = await conn.fetch(DROPPABLE_INDEXES, tables)
    foreign = await conn.fetch(FOREIGN_KEYS, tables)
    for table, name, _ in foreign:
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        await conn.execute(f"DROP INDEX {name}")
    return [definition for _, definition in indexes] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'
        for table, name, definition in foreign
    ]


async def _count(database: str) -> int:
    conn = await connect(database)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tasks"))
    finally:
        await conn.close()


async def sizes(database: str) -> dict[str, Any]:
    """The database's size after VACUUM ANALYZE: in total, per table, per index of tasks."""
    conn = await connect(database)
    try:
        await conn.execute("VACUUM ANALYZE")
        total = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        rows = await conn.fetch(SIZES)
        events = int(await conn.fetchval("SELECT count(*) FROM task_events"))
    finally:
        await conn.close()
    tables = {r[0]: int(r[3]) for r in rows if r[1] == "r"}
    index_of_table: dict[str, int] = {}
    tasks_indexes = {}
    for name, kind, table, _, size in rows:
        if kind == "i":
            index_of_table[table] = index_of_table.get(table, 0) + int(size)
            if table == "tasks":
                tasks_indexes[name] = int(size)
    return {
        "database": total,
        "tables": dict(sorted(tables.items(), key=lambda kv: -kv[1])),
        "indexes_by_table": index_of_table,
        "tasks_indexes": dict(sorted(tasks_indexes.items(), key=lambda kv: -kv[1])),
        "task_events": events,
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def report(runs: list[SeedRun], baseline: SeedRun, args: argparse.Namespace) -> None:
    how = "indexes in place" if args.naive_baseline else "indexes built after"
    print(f"\nseed of {args.tasks:,} tasks over {args.days} days (PostgreSQL); baseline: {how}\n")
    head = f"  {'run':<12} {'tasks':>10} {'seconds':>9} {'÷ baseline':>11}"
    print(f"{head} {'CLI CPU s':>10} {'peak RSS':>9}")
    for run in [baseline, *runs]:
        ratio = run.seconds / baseline.seconds
        rss = f"{run.peak_rss_mb:,.0f} MB" if run.peak_rss_mb else "-"
        cpu = f"{run.cpu_seconds:,.1f}" if run.cpu_seconds else "-"
        line = f"  {run.label:<12} {run.tasks:>10,} {run.seconds:>9.1f} {ratio:>10.2f}x"
        print(f"{line} {cpu:>10} {rss:>9}")
    sized = {run.label: run for run in runs if run.sizes}
    for run in sized.values():
        s = run.sizes
        n = max(run.tasks, 1)
        print(f"\n{run.label}: database {_mb(s['database'])}, {s['database'] / n:,.0f} bytes/task")
        head = f"  {'table (heap + TOAST + indexes)':<40} {'size':>10} {'bytes/task':>11}"
        print(f"{head} {'indexes':>10}")
        for table, size in s["tables"].items():
            if size >= 2**20:
                idx = s["indexes_by_table"].get(table, 0)
                print(f"  {table:<40} {_mb(size):>10} {size / n:>11,.0f} {_mb(idx):>10}")
        print(f"  {'index of tasks':<40} {'size':>10} {'bytes/task':>11}")
        for index, size in s["tasks_indexes"].items():
            print(f"  {index:<40} {_mb(size):>10} {size / n:>11,.0f}")


async def main(args: argparse.Namespace) -> int:
    cli_db, sql_db, before_db = "seed_bench_cli", "seed_bench_sql", "seed_bench_before"
    runs: list[SeedRun] = []
    try:
        baseline = await seed_with_sql(sql_db, args)
        if not args.keep:
            await drop_db(sql_db)
        # With --before-src the two CLIs take turns, so that both see the same moments.
        for round_ in range(args.rounds):
            last = round_ == args.rounds - 1
            for label, database, src in (
                ("cli", cli_db, None),
                ("before", before_db, args.before_src),
            ):
                if label == "before" and not src:
                    continue
                runs.append(await seed_with_cli(label, database, args, src))
                if last:
                    runs[-1].sizes = await sizes(database)
                if not (last and args.keep):
                    await drop_db(database)
    finally:
        if not args.keep:
            for name in (cli_db, sql_db, before_db):
                await drop_db(name)
    report(runs, baseline, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps([run.__dict__ for run in [baseline, *runs]], indent=2)
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=TASKS, help="tasks seeded (1,000,000)")
    parser.add_argument("--days", type=int, default=DAYS, help="spread over N days (90)")
    parser.add_argument("--before-src", help="another checkout whose CLI seeds a third database")
    parser.add_argument("--rounds", type=int, default=1, help="CLI seeds of each checkout (1)")
    parser.add_argument(
        "--naive-baseline",
        action="store_true",
        help="the baseline inserts with every index in place (default: dropped and built after)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
