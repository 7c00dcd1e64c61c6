"""Data lifecycle: export throughput and peak server RSS, prune rate with list latency during it.

    python -m bench.lifecycle [--tasks 200000] [--days 60] [--chunks 3] [--samples 200]

One real uvicorn server on a PostgreSQL database of its own (dropped at the end). The
database is seeded through the CLI (`dashboard-api seed --tasks N --days D`: status events
included) and given `--chunks` output chunks of 200 bytes per task (SQL, before timing).

- Export: `GET /api/tasks/export` as CSV and as JSON Lines, read as fast as one client
  can: rows per second, the CPU per row of the server and of the database's backends,
  and the server's resident memory (VmRSS, sampled every 20 ms) before and at its peak
  during each export. In the same run, `GET /api/health` requests per second on one
  keep-alive connection give the floor the machine allows. `--rounds N` takes turns N
  times; with `--skip-prune --read-template` the runs read the template itself (no
  copy; the checkouts must share a migration head).
- Prune: `prune_once` of what is older than D/2 days (about half the tasks, with their
  chunks and events; what `dashboard-api prune --older-than D/2` runs) in a process of
  its own, started before the clock, while one client keeps reading the first page of
  `GET /api/tasks` (and of `status=completed`) back to back: tasks deleted per second,
  and the list's p50/p99 before the prune (same client, same requests) and during it.
- Analytics: the summary and performance over every day of the data, before the prune
  and after it, must be equal (checked, not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from bench._common import (
    BIN,
    KeepAliveClient,
    connect,
    cpu_seconds,
    db_url,
    drop_db,
    free_port,
    log,
    pct,
    recreate_db,
    task_count,
)
from bench._server import start_server, stop_server, wait_healthy

PRUNER = """
import asyncio, sys, time
from datetime import UTC, datetime, timedelta
from dashboard_api.db.engine import Database
from dashboard_api.services.retention import prune_once

async def main():
    db = Database(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    older = datetime.now(UTC) - timedelta(days=float(sys.argv[2]))
    report = await prune_once(db, older_than=older)
    print(f"{report.line()} ({time.perf_counter() - t0:.1f} s)", flush=True)
    await db.dispose()

asyncio.run(main())
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def sample_peak(pid: int, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.02)
    return max(peak, rss_kib(pid))


async def stream_export(port: int, token: str, fmt: str) -> tuple[int, int, float]:
    """(rows, bytes, seconds) of one export read to its end on a raw connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(
        (
            f"GET /api/tasks/export?format={fmt} HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    newlines = size = 0
    while chunk := await reader.read(1 << 20):
        size += len(chunk)
        newlines += chunk.count(b"\n")
    seconds = time.perf_counter() - start
    writer.close()
    # Chunked framing adds a CRLF line per chunk; a header row for CSV. Rows are counted
    # by the server's metric instead (exact), this is the wire size.
    return newlines, size, seconds


async def exported_rows(port: int, fmt: str) -> float:
    """The server's count of rows read for exports (a connection of its own: a kept-alive
    one would have been closed by the server while an export ran)."""
    async with KeepAliveClient("127.0.0.1", port) as client:
        _, body = await client.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f'dashboard_export_rows_total{{format="{fmt}"}}'):
            return float(line.split()[-1])
    return 0.0


async def list_latencies(port: int, token: str, stop: asyncio.Event | None, n: int) -> list[float]:
    """Milliseconds of list requests, alternating two queries, until `stop` (or `n`)."""
    queries: list[dict[str, Any]] = [{}, {"status": "completed"}]
    out: list[float] = []
    async with KeepAliveClient("127.0.0.1", port, {"Authorization": f"Bearer {token}"}) as c:
        await c.get_json("/api/tasks", queries[0])
        i = 0
        while (stop is None and len(out) < n) or (stop is not None and not stop.is_set()):
            t0 = time.perf_counter()
            await c.get_json("/api/tasks", queries[i % 2])
            out.append((time.perf_counter() - t0) * 1000)
            i += 1
    return out


async def analytics_figures(port: int, token: str, days: int) -> list[Any]:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    start = (now - timedelta(days=days + 2)).replace(hour=0, minute=0, second=0, microsecond=0)
    end = (now + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    window = {
        "from": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "to": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out = []
    async with KeepAliveClient("127.0.0.1", port, {"Authorization": f"Bearer {token}"}) as c:
        for path in ("/api/analytics/summary", "/api/analytics/performance"):
            out.append(await c.get_json(path, window))
        out.append(await c.get_json("/api/analytics/costs/histogram", {**window, "period": "day"}))
    return out


async def seed_template(args: argparse.Namespace, name: str) -> None:
    """Seed `name` through the CLI (tasks, events) and give each task `--chunks` chunks."""
    from dashboard_api.db.migrate import upgrade_to_head

    await recreate_db(name)
    url = db_url(name)
    await asyncio.to_thread(upgrade_to_head, url)
    env = {**os.environ, "DASHBOARD_DATABASE_URL": url, "DASHBOARD_LOG_LEVEL": "WARNING"}
    env.pop("DASHBOARD_REDIS_URL", None)
    log(f"seeding {args.tasks} tasks over {args.days} days into {name} ...")
    t0 = time.perf_counter()
    subprocess.run(
        [str(BIN / "dashboard-api"), "seed", "--tasks", str(args.tasks), "--days",
         str(args.days), "--random-seed", "1"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    conn = await connect(name)
    try:
        await conn.execute(
            "INSERT INTO task_output_chunks (task_id, seq, stream, content, created_at)"
            " SELECT task_id, g, 'stdout', repeat('x', 199) || chr(10), created_at"
            " FROM tasks, generate_series(1, $1::int) g",
            args.chunks,
        )
        await conn.execute("UPDATE tasks SET output_seq = $1::int", args.chunks)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    log(f"seeded in {time.perf_counter() - t0:.0f} s")


@contextlib.asynccontextmanager
async def run_database(args: argparse.Namespace, tag: str) -> AsyncIterator[tuple[str, str]]:
    """A copy of the seeded template for one run (the prune consumes it; the template
    itself with `--read-template`): its URL and a user token. The template is seeded first
    when missing, and kept (`--template`) or dropped at the end of the benchmark."""
    from dashboard_api.db.engine import Database
    from dashboard_api.services.tokens import create_token
    from dashboard_api.timeutil import SystemClock

    # An export writes nothing: with `--read-template` a run reads the template itself
    # (adds its token to it and migrates it) instead of a copy.
    copy = not args.read_template
    name = f"{args.db_prefix}{os.getpid()}_{tag}" if copy else args.template_name
    if copy:
        await recreate_db(name, template=args.template_name)
    url = db_url(name)
    try:
        db = Database(url)
        async with db.write() as session:
            token, _ = await create_token(
                session, user_id="bench-user", role="user", now=SystemClock().now()
            )
        await db.dispose()
        conn = await connect(name)
        try:
            # The seed's running tasks hold leases that ended minutes after it: the lease
            # reaper would fail them between the analytics taken before and after the
            # prune. Every run's copy extends them past the benchmark.
            if copy:
                await conn.execute(
                    "UPDATE tasks SET lease_expires_at = now() + interval '1 day'"
                    " WHERE status = 'running'"
                )
            chunks = await conn.fetchval("SELECT count(*) FROM task_output_chunks")
            events = await conn.fetchval("SELECT count(*) FROM task_events")
            tasks = await conn.fetchval("SELECT count(*) FROM tasks")
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
        finally:
            await conn.close()
        log(f"{name}: {tasks} tasks, {chunks} chunks, {events} events, {size / 2**20:.0f} MiB")
        yield url, token
    finally:
        if copy:
            await drop_db(name)


async def health_floor(port: int) -> float:
    """`/api/health` requests per second on one keep-alive connection (2 s)."""
    async with KeepAliveClient("127.0.0.1", port) as c:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2:
            await c.get("/api/health")
            n += 1
        return n / (time.perf_counter() - t0)


async def backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to `database` (Linux /proc:
    the server runs on this machine), other than the asking one."""
    conn = await connect(database)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()
    return {r["pid"]: cpu_seconds(r["pid"]) for r in pids}


async def measure_exports(port: int, token: str, pid: int, database: str, label: str) -> None:
    for fmt in ("csv", "jsonl"):
        idle = rss_kib(pid)
        before_rows = await exported_rows(port, fmt)
        cpu0 = cpu_seconds(pid)
        db0 = await backend_cpu(database)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_peak(pid, stop))
        _, size, seconds = await stream_export(port, token, fmt)
        stop.set()
        peak = await sampler
        cpu = cpu_seconds(pid) - cpu0
        # A backend that connected during the export counts from 0.
        db_cpu = sum(v - db0.get(p, 0.0) for p, v in (await backend_cpu(database)).items())
        rows = int(await exported_rows(port, fmt) - before_rows)
        mib_s = size / 2**20 / seconds
        per_row = 1e6 / max(rows, 1)
        print(
            f"[{label}] export {fmt:5}: {rows} rows in {seconds:.1f} s = {rows / seconds:,.0f}"
            f" rows/s ({mib_s:.1f} MiB/s); server CPU {cpu:.1f} s = {cpu * per_row:.1f}"
            f" us/row; database CPU {db_cpu:.1f} s = {db_cpu * per_row:.1f} us/row; server"
            f" RSS {idle / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB"
            f" (+{(peak - idle) / 1024:.0f})",
            flush=True,
        )


async def measure_prune(
    port: int, token: str, url: str, env: dict[str, str], args: argparse.Namespace, label: str
) -> None:
    figures = await analytics_figures(port, token, args.days)
    baseline = await list_latencies(port, token, None, args.samples)
    print(
        f"[{label}] list before prune: p50 {pct(baseline, 0.5):.1f} ms, p99 "
        f"{pct(baseline, 0.99):.1f} ms ({len(baseline)} requests)", flush=True,
    )  # fmt: skip
    # The prune runs in a process of its own (as the CLI or another replica's job would),
    # started and imported before the clock starts.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRUNER, url, str(args.days / 2),
        env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert (await proc.stdout.readline()).strip() == b"ready"
    stop = asyncio.Event()
    during_task = asyncio.create_task(list_latencies(port, token, stop, 0))
    await asyncio.sleep(0.5)
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    line = (await proc.stdout.readline()).decode().strip()
    await asyncio.sleep(0.5)
    stop.set()
    during = await during_task
    if await proc.wait() != 0 or not line:
        raise RuntimeError("the prune failed")
    deleted = int(line.split()[1])
    own = float(line.rsplit("(", 1)[1].split()[0])
    print(f"[{label}] prune: {line}")
    print(f"[{label}] prune rate: {deleted / own:,.0f} tasks/s (with their chunks and events)")
    print(
        f"[{label}] list during prune: p50 {pct(during, 0.5):.1f} ms, p99 "
        f"{pct(during, 0.99):.1f} ms ({len(during)} requests); p99 ratio during/before "
        f"{pct(during, 0.99) / pct(baseline, 0.99):.2f}", flush=True,
    )  # fmt: skip
    quarters = [during[i * len(during) // 4 : (i + 1) * len(during) // 4] for i in range(4)]
    print(
        f"[{label}] list p50/p99 by quarter of the prune: "
        + ", ".join(f"{pct(q, 0.5):.0f}/{pct(q, 0.99):.0f}" for q in quarters if q)
        + " ms", flush=True,
    )  # fmt: skip
    after = await analytics_figures(port, token, args.days)
    same = after == figures
    print(f"[{label}] analytics (summary, performance, daily histogram) unchanged: {same}")
    if not same:
        raise SystemExit("analytics changed across the prune")


async def run_one(args: argparse.Namespace, label: str, src: str | None) -> None:
    async with run_database(args, label) as (url, token):
        name = url.rsplit("/", 1)[1]
        env = {**os.environ, "DASHBOARD_DATABASE_URL": url, "DASHBOARD_LOG_LEVEL": "WARNING"}
        env.pop("DASHBOARD_REDIS_URL", None)
        if src:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        # The copy is migrated by the code under test (a template seeded by another
        # checkout may be at an older revision).
        subprocess.run(
            [sys.executable, "-m", "dashboard_api", "migrate"], env=env, check=True,
            capture_output=True,
        )  # fmt: skip
        port = free_port()
        server = start_server(port, env, src)
        try:
            await wait_healthy(port)
            rps = await health_floor(port)
            print(f"[{label}] floor: /api/health {rps:.0f} req/s on one connection", flush=True)
            if not args.skip_export:
                await measure_exports(port, token, server.pid, name, label)
            if not args.skip_prune:
                await measure_prune(port, token, url, env, args, label)
        finally:
            stop_server(server)


async def main(args: argparse.Namespace) -> None:
    args.template_name = args.template or f"{args.db_prefix}{os.getpid()}_seed"
    created = False
    if args.template is None or await task_count(args.template) is None:
        await seed_template(args, args.template_name)
        created = True
    try:
        runs: list[tuple[str, str | None]] = [("after", None)]
        if args.before_src:
            runs.insert(0, ("before", args.before_src))
        for _ in range(args.rounds):
            for label, src in runs:
                await run_one(args, label, src)
    finally:
        if created and args.template is None:
            await drop_db(args.template_name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--chunks", type=int, default=3, help="output chunks per task")
    parser.add_argument("--samples", type=int, default=200, help="list requests before")
    parser.add_argument(
        "--db-prefix", default="dash_bench_life_", help="prefix of the databases it creates"
    )
    parser.add_argument(
        "--template",
        help="a database to keep the seeded data in: seeded when missing, reused (each run "
        "works on a copy) and kept otherwise",
    )
    parser.add_argument("--before-src", help="another checkout's src: runs first, same data")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each checkout, taking turns")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-prune", action="store_true")
    parser.add_argument(
        "--read-template",
        action="store_true",
        help="with --skip-prune: each run reads the template itself, no copy (each run "
        "migrates it: every checkout compared must be at the same migration head)",
    )
    parsed = parser.parse_args()
    if parsed.read_template and not parsed.skip_prune:
        parser.error("--read-template needs --skip-prune (a prune deletes from the template)")
    asyncio.run(main(parsed))
