"""Soak: mixed load on one loopback server for a bounded time, then a full audit.

    python -m bench.soak                        # 10 minutes, PostgreSQL + Redis (`make soak`)
    python -m bench.soak --minutes 2            # the same, shorter
    python -m bench.soak --backend sqlite       # a temp SQLite file + the in-process broker
    python -m bench.soak --database-url postgresql+asyncpg://... [--redis-url ...]

On PostgreSQL the soak creates a database of its own on the local server
(`DASHBOARD_BENCH_PG_HOST`/`_PORT`) and uses a Redis key prefix of its own, and drops both
at the end (`--keep` keeps the database).

Producers register tasks, append output and end them every way (completed, failed,
cancelled; tokens, computed and reported costs); readers list tasks, read logs and
analytics and ask for cancels (endpoints that are not there — 404 — are skipped);
WebSocket subscribers follow live tasks and resume at random points. At the end:

- every acknowledged chunk is in its task's log exactly once, at the seq it was
  acknowledged with (seqs gap-free; a stored chunk that was never acknowledged must be
  one whose request got no answer);
- analytics (summary, histogram, performance over several windows) equal brute force
  over the raw rows, read from the database (`tests/hardening/analytics_audit.py`);
- the server's resident memory (VmRSS, sampled from /proc) does not keep growing.

The report states every figure; `--json PATH` writes them too. Exit status 1 on a failed
check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake


@dataclass
class Stats:
    appends: int = 0
    chunks: int = 0
    append_latency: list[float] = field(default_factory=list)
    reads: int = 0
    read_skipped: set[str] = field(default_factory=set)
    ws_sessions: int = 0
    ws_events: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    # Every request by kind ("append", "read /api/tasks", "ws connect", ...) and answer
    # ("200", "503", "ReadTimeout", ...).
    requests: dict[str, Counter[str]] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def answered(self, kind: str, answer: int | str) -> None:
        self.requests.setdefault(kind, Counter())[str(answer)] += 1


@dataclass
class World:
    url: str
    tokens: dict[str, str]
    deadline: float
    stats: Stats = field(default_factory=Stats)
    acked: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    # Chunks whose append got no answer (transport error, 5xx): they may or may not be stored.
    in_doubt: dict[str, set[str]] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _tokens(database_url: str) -> dict[str, str]:
    from dashboard_api.db.engine import Database
    from dashboard_api.services.tokens import create_token
    from dashboard_api.timeutil import SystemClock

    db = Database(database_url)
    out = {}
    try:
        async with db.write() as session:
            for role in ("user", "agent", "admin"):
                out[role], _ = await create_token(
                    session,
                    user_id=f"soak-{role}",
                    role=role,
                    now=SystemClock().now(),
                )
    finally:
        await db.dispose()
    return out


MODELS = ("claude-sonnet-4", "claude-opus-4", "gpt-5", "no-such-model", None)


async def producer(world: World, n: int) -> None:
    headers = {"Authorization": f"Bearer {world.tokens['agent']}"}
    s = world.stats
    async with httpx.AsyncClient(base_url=world.url, headers=headers, timeout=60) as http:
        k = 0
        while time.monotonic() < world.deadline:
            task_id = f"soak-{n}-{k}-{os.urandom(3).hex()}"
            k += 1
            model = random.choice(MODELS)
            body: dict[str, Any] = {
                "task_id": task_id,
                "agent_type": random.choice(["coder", "reviewer", "planner"]),
                "source": random.choice(["github", "jira", "api"]),
                "input_message": f"soak task {k}",
                "status": "running",
            }
            if model is not None:
                body["model"] = model
            try:
                r = await http.post("/api/tasks", json=body)
            except httpx.HTTPError as exc:
                s.answered("register", type(exc).__name__)
                continue
            s.answered("register", r.status_code)
            if r.status_code != 201:
                world.stats.error(f"register {r.status_code}")
                continue
            world.acked[task_id] = []
            world.live.append(task_id)
            for i in range(random.randint(20, 80)):
                if time.monotonic() >= world.deadline:
                    break
                if random.random() < 0.2:
                    body = {"chunks": [{"content": f"{task_id}:{i}.{j}\n"} for j in range(5)]}
                else:
                    body = {"content": f"{task_id}:{i}\n"}
                contents = (
                    [c["content"] for c in body["chunks"]]
                    if "chunks" in body
                    else [body["content"]]
                )
                started = time.perf_counter()
                try:
                    r = await http.post(f"/api/tasks/{task_id}/output", json=body)
                except httpx.HTTPError as exc:
                    s.answered("append", type(exc).__name__)
                    world.stats.error(f"append {type(exc).__name__}")
                    world.in_doubt.setdefault(task_id, set()).update(contents)
                    continue
                world.stats.append_latency.append(time.perf_counter() - started)
                s.answered("append", r.status_code)
                if r.status_code != 200:
                    world.stats.error(f"append {r.status_code}")
                    if r.status_code >= 500:
                        world.in_doubt.setdefault(task_id, set()).update(contents)
                    continue
                answer = r.json()
                seqs = range(answer["first_seq"], answer["last_seq"] + 1)
                world.acked[task_id].extend(zip(seqs, contents, strict=True))
                world.stats.appends += 1
                world.stats.chunks += len(contents)
            await _finish(world, http, task_id)
            with contextlib.suppress(ValueError):
                world.live.remove(task_id)


async def _finish(world: World, http: httpx.AsyncClient, task_id: str) -> None:
    """Metrics, sometimes a reported cost, then an end of every kind (analytics feed on it)."""
    s = world.stats
    update: dict[str, Any] = {
        "input_tokens": random.randint(0, 200_000),
        "output_tokens": random.randint(0, 40_000),
        "cache_read_tokens": random.randint(0, 20_000),
    }
    if random.random() < 0.2:
        update["cost_usd"] = random.choice((0.0, 0.05, 0.123456, 1.5))
    end = random.choices(("completed", "failed", "cancelled"), weights=(7, 2, 1))[0]
    for kind, payload in (("metrics", update), ("complete", {"status": end})):
        try:
            r = await http.patch(f"/api/tasks/{task_id}", json=payload)
        except httpx.HTTPError as exc:
            s.answered(kind, type(exc).__name__)
            continue
        s.answered(kind, r.status_code)
        if r.status_code != 200:
            s.error(f"{kind} {r.status_code}")


async def reader(world: World, available: set[str]) -> None:
    headers = {"Authorization": f"Bearer {world.tokens['user']}"}
    paths = [
        "/api/tasks?per_page=50",
        "/api/tasks?sort=-cost_usd&per_page=20&status=completed",
        "/api/tasks?q=soak&per_page=10",
        "/api/analytics/summary",
        "/api/analytics/performance",
        "/api/analytics/costs/histogram?period=hour",
        "/api/agents",
        "/api/status",
    ]
    paths = [p for p in paths if p.split("?")[0] in available]
    async with httpx.AsyncClient(base_url=world.url, headers=headers, timeout=60) as http:
        while time.monotonic() < world.deadline:
            if world.live and random.random() < 0.01:
                # A user asks a running task to stop (its producer still ends it).
                task_id = random.choice(world.live)
                try:
                    r = await http.post(f"/api/tasks/{task_id}/cancel")
                except httpx.HTTPError as exc:
                    world.stats.answered("cancel", type(exc).__name__)
                    continue
                world.stats.answered("cancel", r.status_code)
                if r.status_code not in (200, 409):  # 409: it ended meanwhile
                    world.stats.error(f"cancel {r.status_code}")
                continue
            if world.acked and random.random() < 0.3:
                task_id = random.choice(list(world.acked))
                path = f"/api/tasks/{task_id}/logs/full?after_seq={random.randint(0, 50)}"
                kind = "read /api/tasks/{id}/logs/full"
            else:
                path = random.choice(paths)
                kind = "read " + path.split("?")[0]
            try:
                r = await http.get(path)
            except httpx.HTTPError as exc:
                world.stats.answered(kind, type(exc).__name__)
                world.stats.error(f"read {type(exc).__name__}")
                continue
            world.stats.answered(kind, r.status_code)
            if r.status_code == 200:
                world.stats.reads += 1
            else:
                world.stats.error(f"read {path.split('?')[0]} {r.status_code}")


async def subscriber(world: World) -> None:
    url = world.url.replace("http://", "ws://") + f"/ws?token={world.tokens['user']}"
    await asyncio.sleep(random.uniform(0, 3))
    while time.monotonic() < world.deadline:
        candidates = world.live or list(world.acked)
        if not candidates:
            await asyncio.sleep(0.2)
            continue
        task_id = random.choice(candidates)
        known = len(world.acked.get(task_id, []))
        since = random.randint(0, known)
        expected = since
        try:
            async with websockets.connect(url, open_timeout=30, max_size=None) as ws:
                world.stats.ws_sessions += 1
                world.stats.answered("ws connect", 101)
                sub = {"type": "subscribe", "channel": f"task:{task_id}", "since_seq": since}
                await ws.send(orjson.dumps(sub).decode())
                stop_at = time.monotonic() + random.uniform(0.5, 5)
                while time.monotonic() < min(stop_at, world.deadline):
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 1)
                    except TimeoutError:
                        continue
                    msg = orjson.loads(raw)
                    if msg["type"] == "task_output":
                        world.stats.ws_events += 1
                        if msg["seq"] != expected + 1:
                            world.problems.append(
                                f"ws {task_id}: seq {msg['seq']} after {expected} (since {since})"
                            )
                        expected = msg["seq"]
                    elif msg["type"] == "task_status" and msg.get("status") == "completed":
                        break
        except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError) as exc:
            world.stats.error(f"ws {type(exc).__name__}")
            if not isinstance(exc, ConnectionClosed):
                world.stats.answered("ws connect", type(exc).__name__)
            await asyncio.sleep(0.2)


async def sample_rss(world: World, pid: int | None) -> None:
    if pid is None:
        return
    started = time.monotonic()
    while time.monotonic() < world.deadline + 1:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    world.stats.rss_kib.append((time.monotonic() - started, int(line.split()[1])))
        await asyncio.sleep(2)


@dataclass
class ChunkAudit:
    tasks: int = 0
    acknowledged: int = 0
    stored: int = 0
    in_doubt: int = 0
    in_doubt_stored: int = 0


async def audit_chunks(world: World) -> ChunkAudit:
    """Every acknowledged chunk in its task's log exactly once, at its seq; seqs gap-free."""
    result = ChunkAudit(tasks=len(world.acked))
    headers = {"Authorization": f"Bearer {world.tokens['user']}"}
    async with httpx.AsyncClient(base_url=world.url, headers=headers, timeout=120) as http:
        for task_id, acked in world.acked.items():
            doubt = world.in_doubt.get(task_id, set())
            result.acknowledged += len(acked)
            result.in_doubt += len(doubt)
            r = await http.get(f"/api/tasks/{task_id}/logs/full")
            if r.status_code != 200:
                world.problems.append(f"audit {task_id}: {r.status_code}")
                continue
            stored = [(c["seq"], c["content"]) for c in r.json()["chunks"]]
            result.stored += len(stored)
            if [seq for seq, _ in stored] != list(range(1, len(stored) + 1)):
                world.problems.append(f"audit {task_id}: seqs are not 1..{len(stored)}")
            contents = [c for _, c in stored]
            if len(contents) != len(set(contents)):
                world.problems.append(f"audit {task_id}: a chunk is stored twice")
            at = dict(stored)
            lost = [(seq, c) for seq, c in acked if at.get(seq) != c]
            if lost:
                world.problems.append(
                    f"audit {task_id}: {len(lost)} of {len(acked)} acknowledged chunks "
                    f"missing or moved, first {lost[0]}"
                )
            extra = set(contents) - {c for _, c in acked}
            result.in_doubt_stored += len(extra & doubt)
            if extra - doubt:
                world.problems.append(
                    f"audit {task_id}: {len(extra - doubt)} stored chunks nobody appended"
                )
    return result


def _windows(started: datetime, ended: datetime) -> list[Any]:
    from tests.hardening.analytics_audit import Window

    lo, hi = started - timedelta(hours=1), ended + timedelta(hours=1)
    middle = started + (ended - started) / 2
    return [
        Window(lo, hi),
        Window(lo, hi, tz="Asia/Kathmandu", period="day"),
        Window(lo, hi, agent_type=("coder",), source=("github", "api"), tz="Asia/Kolkata"),
        Window(middle, hi, agent_type=("reviewer", "planner"), tz="America/New_York"),
        Window(started, middle),  # both edges inside the load: raw rows at both ends
    ]


async def audit_analytics(world: World, database_url: str, started: datetime) -> Any:
    """Analytics answers against brute force over the raw rows, read from the database."""
    from tests.hardening.analytics_audit import compare, load_tasks

    raw = await load_tasks(database_url)
    headers = {"Authorization": f"Bearer {world.tokens['user']}"}
    async with httpx.AsyncClient(base_url=world.url, timeout=300) as http:
        result = await compare(http, headers, raw, _windows(started, datetime.now(UTC)))
    world.problems.extend(f"analytics {p}" for p in result.problems)
    return result


def _start_server(
    args: argparse.Namespace, workdir: Path, database_url: str, prefix: str
) -> tuple[str, subprocess.Popen[bytes]]:
    from dashboard_api.db.migrate import upgrade_to_head

    upgrade_to_head(database_url)
    port = _free_port()
    env = {
        **os.environ,
        "DASHBOARD_DATABASE_URL": database_url,
        "DASHBOARD_LOG_LEVEL": "WARNING",
        "DASHBOARD_RATE_LIMIT_PER_MINUTE": "0",
        "DASHBOARD_WS_MAX_CONNECTIONS_PER_TOKEN": "0",
        "DASHBOARD_REDIS_PREFIX": prefix,
    }
    env.pop("DASHBOARD_REDIS_URL", None)
    if args.redis_url:
        env["DASHBOARD_REDIS_URL"] = args.redis_url
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "dashboard_api.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--ws-per-message-deflate", "false",
        ],
        env=env,
        cwd=workdir,
        stderr=(workdir / "server.log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return url, proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start; see " + str(workdir / "server.log"))


def _rss_verdict(samples: list[tuple[float, int]]) -> tuple[bool, dict[str, float]]:
    if len(samples) < 8:
        return True, {}
    values = [kib for _, kib in samples]
    quarter = max(2, len(values) // 4)
    # Skip the first quarter (warm-up: imports, pools, caches), compare the second to the last.
    warm = statistics.median(values[quarter : 2 * quarter])
    late = statistics.median(values[-quarter:])
    bounded = late <= warm * 1.5 + 50 * 1024
    mib = {"start": values[0], "warm": warm, "end": late, "peak": max(values)}
    return bounded, {k: round(v / 1024, 1) for k, v in mib.items()}


class OwnDatabase:
    """A PostgreSQL database and a Redis key prefix of this soak's own, dropped at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = f"dash_soak_{os.getpid()}"
        self.prefix = f"dashsoak:{os.urandom(4).hex()}:"

    async def create(self) -> str:
        from bench._common import db_url, recreate_db

        await recreate_db(self.name)
        return db_url(self.name)

    async def drop(self, *, database: bool) -> None:
        from bench._common import drop_db

        if database and not self.args.keep:
            await drop_db(self.name)
        if self.args.redis_url:
            import redis.asyncio as aioredis

            client = aioredis.from_url(self.args.redis_url)
            try:
                keys = [k async for k in client.scan_iter(match=f"{self.prefix}*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


def _print_report(report: dict[str, Any]) -> None:
    s, c, a, rss = report["load"], report["chunks"], report["analytics"], report["rss_mib"]
    print(f"soak: {report['seconds']:.0f} s on {report['backend']}, {report['producers']} "
          f"producers, {report['readers']} readers, {report['subscribers']} WebSocket "
          f"subscribers")  # fmt: skip
    print(f"  appends {s['appends']} ({s['appends_per_s']:.0f}/s), chunks {s['chunks']} "
          f"({s['chunks_per_s']:.0f}/s), append p50 {s['append_p50_ms']:.1f} ms, "
          f"p99 {s['append_p99_ms']:.1f} ms")  # fmt: skip
    print(f"  reads {s['reads']} ({s['reads_per_s']:.0f}/s)")
    print(f"  subscribers: {s['ws_sessions']} sessions, {s['ws_events']} task_output events "
          f"({s['ws_events_per_s']:.0f}/s)")  # fmt: skip
    print("  requests by kind and answer:")
    for kind, answers in sorted(report["requests"].items()):
        print(f"    {kind:<40} {dict(sorted(answers.items()))}")
    # Every non-2xx answer and transport error (a cancel's 409: the task had just ended).
    print(f"  errors by status: {report['errors_by_status'] or 'none'}")
    print(f"  chunks: {c['acknowledged']} acknowledged in {c['tasks']} tasks, {c['stored']} "
          f"stored; {c['in_doubt']} in doubt (no answer), {c['in_doubt_stored']} of them "
          f"stored")  # fmt: skip
    print(f"  analytics: {a['figures']} figures over {a['tasks']} tasks and {a['windows']} "
          f"windows compared with brute force, {a['problems']} disagree")  # fmt: skip
    if rss:
        print(f"  RSS start {rss['start']} MiB, warm {rss['warm']} MiB, end {rss['end']} MiB, "
              f"peak {rss['peak']} MiB")  # fmt: skip
    for problem in report["problem_list"][:30]:
        print("  PROBLEM", problem)
    for name, verdict in report["checks"].items():
        print(f"  check {name}: {'ok' if verdict else 'FAILED'}")


def _errors_by_status(requests: dict[str, Counter[str]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for answers in requests.values():
        for answer, n in answers.items():
            if not answer.isdigit() or int(answer) >= 400:
                out[answer] += n
    return dict(sorted(out.items()))


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="dash-soak-"))
    proc: subprocess.Popen[bytes] | None = None
    if args.backend == "sqlite":
        args.redis_url = None if args.redis_url == DEFAULT_REDIS else args.redis_url
    if args.no_redis:
        args.redis_url = None
    if args.url and not args.database_url:
        raise SystemExit("--url needs --database-url (to create the soak's tokens)")
    own = OwnDatabase(args)
    own_database = not args.url and not args.database_url and args.backend == "postgres"
    try:
        if args.url:
            url, pid = args.url, args.pid
            database_url = args.database_url
        else:
            if args.database_url:
                database_url = args.database_url
            elif args.backend == "sqlite":
                database_url = f"sqlite+aiosqlite:///{workdir / 'soak.db'}"
            else:
                database_url = await own.create()
            url, proc = _start_server(args, workdir, database_url, own.prefix)
            pid = proc.pid
        tokens = await _tokens(database_url)
        spec = httpx.get(f"{url}/openapi.json").json()
        available = set(spec["paths"])
        world = World(url, tokens, time.monotonic() + args.minutes * 60)
        started, started_at = time.monotonic(), datetime.now(UTC)
        jobs = [sample_rss(world, pid)]
        jobs += [producer(world, n) for n in range(args.producers)]
        jobs += [reader(world, available) for _ in range(args.readers)]
        jobs += [subscriber(world) for _ in range(args.subscribers)]
        await asyncio.gather(*jobs)
        elapsed = time.monotonic() - started
        chunks = await audit_chunks(world)
        analytics = await audit_analytics(world, database_url, started_at)
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        if own_database or proc is not None:
            await own.drop(database=own_database)
    s = world.stats
    lat = sorted(s.append_latency) or [0.0]
    bounded, rss = _rss_verdict(s.rss_kib)
    chunk_problems = [p for p in world.problems if not p.startswith("analytics ")]
    report: dict[str, Any] = {
        "backend": database_url.split(":")[0] + (" + Redis" if args.redis_url else " + memory"),
        "seconds": elapsed,
        "producers": args.producers,
        "readers": args.readers,
        "subscribers": args.subscribers,
        "load": {
            "appends": s.appends,
            "appends_per_s": s.appends / elapsed,
            "chunks": s.chunks,
            "chunks_per_s": s.chunks / elapsed,
            "append_p50_ms": lat[len(lat) // 2] * 1000,
            "append_p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "reads": s.reads,
            "reads_per_s": s.reads / elapsed,
            "ws_sessions": s.ws_sessions,
            "ws_events": s.ws_events,
            "ws_events_per_s": s.ws_events / elapsed,
        },
        "requests": {k: dict(v) for k, v in s.requests.items()},
        "errors_by_status": _errors_by_status(s.requests),
        "errors": s.errors,
        "chunks": vars(chunks),
        "analytics": {
            "figures": analytics.figures,
            "tasks": analytics.tasks,
            "windows": len(_windows(started_at, started_at)),
            "problems": len(analytics.problems),
        },
        "rss_mib": rss,
        "problem_list": world.problems,
        "checks": {
            "every acknowledged chunk exactly once at its seq": not chunk_problems,
            "analytics equal brute force": not analytics.problems,
            "resident memory bounded": bounded,
        },
    }
    _print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if all(report["checks"].values()) else 1


DEFAULT_REDIS = os.environ.get("DASHBOARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument(
        "--backend",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="postgres (default): a database of the soak's own on the local server, + Redis",
    )
    parser.add_argument("--database-url", help="soak this database instead")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="default: %(default)s")
    parser.add_argument("--no-redis", action="store_true", help="the in-process broker")
    parser.add_argument("--keep", action="store_true", help="keep the soak's database")
    parser.add_argument("--url", help="soak a server already running (give --database-url)")
    parser.add_argument("--pid", type=int, help="that server's pid, for RSS sampling")
    parser.add_argument("--json", help="also write the report's figures to this file")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
