"""Soak: mixed load on one loopback server for a bounded time, then a full audit.

    python -m bench.soak --minutes 10                     # own server on a temp SQLite
    python -m bench.soak --minutes 2 --database-url postgresql+asyncpg://...  [--redis-url ...]

Producers register tasks and append output; readers list tasks, read logs and analytics
(endpoints that are not there — 404 — are skipped); WebSocket subscribers follow live
tasks and resume at random points. At the end every acknowledged chunk must be in its
task's log exactly once, at the seq it was acknowledged with, and the server's resident
memory (VmRSS, sampled from /proc) must not keep growing. Exit status 1 on a failed check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class World:
    url: str
    tokens: dict[str, str]
    deadline: float
    stats: Stats = field(default_factory=Stats)
    acked: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
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
                    role=role,  # type: ignore[arg-type]
                    now=SystemClock().now(),
                )
    finally:
        await db.dispose()
    return out


async def producer(world: World, n: int) -> None:
    headers = {"Authorization": f"Bearer {world.tokens['agent']}"}
    async with httpx.AsyncClient(base_url=world.url, headers=headers, timeout=60) as http:
        k = 0
        while time.monotonic() < world.deadline:
            task_id = f"soak-{n}-{k}-{os.urandom(3).hex()}"
            k += 1
            r = await http.post(
                "/api/tasks",
                json={
                    "task_id": task_id,
                    "agent_type": random.choice(["coder", "reviewer", "planner"]),
                    "source": random.choice(["github", "jira", "api"]),
                    "input_message": f"soak task {k}",
                    "status": "running",
                    "model": "claude-sonnet-4",
                },
            )
            if r.status_code != 201:
                world.stats.error(f"register {r.status_code}")
                continue
            world.acked[task_id] = []
            world.live.append(task_id)
            for i in range(random.randint(20, 80)):
                if time.monotonic() >= world.deadline:
                    break
                body: dict[str, Any]
                if random.random() < 0.2:
                    body = {"chunks": [{"content": f"{task_id}:{i}.{j}\n"} for j in range(5)]}
                else:
                    body = {"content": f"{task_id}:{i}\n"}
                started = time.perf_counter()
                try:
                    r = await http.post(f"/api/tasks/{task_id}/output", json=body)
                except httpx.HTTPError as exc:
                    world.stats.error(f"append {type(exc).__name__}")
                    continue
                world.stats.append_latency.append(time.perf_counter() - started)
                if r.status_code != 200:
                    world.stats.error(f"append {r.status_code}")
                    continue
                answer = r.json()
                contents = (
                    [c["content"] for c in body["chunks"]]
                    if "chunks" in body
                    else [body["content"]]
                )
                seqs = range(answer["first_seq"], answer["last_seq"] + 1)
                world.acked[task_id].extend(zip(seqs, contents, strict=True))
                world.stats.appends += 1
                world.stats.chunks += len(contents)
            r = await http.patch(
                f"/api/tasks/{task_id}",
                json={"status": "completed", "input_tokens": 1000, "output_tokens": 500},
            )
            if r.status_code != 200:
                world.stats.error(f"complete {r.status_code}")
            with contextlib.suppress(ValueError):
                world.live.remove(task_id)


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
            if world.acked and random.random() < 0.3:
                task_id = random.choice(list(world.acked))
                path = f"/api/tasks/{task_id}/logs/full?after_seq={random.randint(0, 50)}"
            else:
                path = random.choice(paths)
            try:
                r = await http.get(path)
            except httpx.HTTPError as exc:
                world.stats.error(f"read {type(exc).__name__}")
                continue
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


async def audit(world: World) -> int:
    """Every acknowledged chunk in its task's log exactly once, at its seq; returns tasks seen."""
    headers = {"Authorization": f"Bearer {world.tokens['user']}"}
    async with httpx.AsyncClient(base_url=world.url, headers=headers, timeout=120) as http:
        for task_id, acked in world.acked.items():
            r = await http.get(f"/api/tasks/{task_id}/logs/full")
            if r.status_code != 200:
                world.problems.append(f"audit {task_id}: {r.status_code}")
                continue
            stored = [(c["seq"], c["content"]) for c in r.json()["chunks"]]
            if stored != sorted(acked):
                world.problems.append(
                    f"audit {task_id}: {len(stored)} stored vs {len(acked)} acknowledged"
                )
    return len(world.acked)


def _start_server(
    args: argparse.Namespace, workdir: Path
) -> tuple[str, subprocess.Popen[bytes], str]:
    from dashboard_api.db.migrate import upgrade_to_head

    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'soak.db'}"
    upgrade_to_head(database_url)
    port = _free_port()
    env = {
        **os.environ,
        "DASHBOARD_DATABASE_URL": database_url,
        "DASHBOARD_LOG_LEVEL": "WARNING",
        "DASHBOARD_RATE_LIMIT_PER_MINUTE": "0",
        "DASHBOARD_WS_MAX_CONNECTIONS_PER_TOKEN": "0",
    }
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
                return url, proc, database_url
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start; see " + str(workdir / "server.log"))


def _rss_verdict(samples: list[tuple[float, int]]) -> tuple[bool, str]:
    if len(samples) < 8:
        return True, "too few RSS samples to judge"
    values = [kib for _, kib in samples]
    quarter = max(2, len(values) // 4)
    # Skip the first quarter (warm-up: imports, pools, caches), compare the second to the last.
    warm = statistics.median(values[quarter : 2 * quarter])
    late = statistics.median(values[-quarter:])
    bounded = late <= warm * 1.5 + 50 * 1024
    return bounded, (
        f"RSS start {values[0] / 1024:.0f} MiB, warm {warm / 1024:.0f} MiB, "
        f"end {late / 1024:.0f} MiB, peak {max(values) / 1024:.0f} MiB"
    )


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="dash-soak-"))
    proc: subprocess.Popen[bytes] | None = None
    if args.url:
        url, pid = args.url, args.pid
        if not args.database_url:
            raise SystemExit("--url needs --database-url (to create the soak's tokens)")
        database_url = args.database_url
    else:
        url, proc, database_url = _start_server(args, workdir)
        pid = proc.pid
    try:
        tokens = await _tokens(database_url)
        spec = httpx.get(f"{url}/openapi.json").json()
        available = set(spec["paths"])
        world = World(url, tokens, time.monotonic() + args.minutes * 60)
        started = time.monotonic()
        jobs = [sample_rss(world, pid)]
        jobs += [producer(world, n) for n in range(args.producers)]
        jobs += [reader(world, available) for _ in range(args.readers)]
        jobs += [subscriber(world) for _ in range(args.subscribers)]
        await asyncio.gather(*jobs)
        elapsed = time.monotonic() - started
        tasks = await audit(world)
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
    s = world.stats
    lat = sorted(s.append_latency) or [0.0]
    bounded, rss = _rss_verdict(s.rss_kib)
    print(f"soak: {elapsed:.0f} s on {database_url.split(':')[0]}, {args.producers} producers, "
          f"{args.readers} readers, {args.subscribers} WebSocket subscribers")  # fmt: skip
    print(f"  appends {s.appends} ({s.appends / elapsed:.0f}/s), chunks {s.chunks} "
          f"({s.chunks / elapsed:.0f}/s), tasks {tasks}")  # fmt: skip
    print(f"  append latency p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
          f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms")  # fmt: skip
    print(f"  reads {s.reads} ({s.reads / elapsed:.0f}/s)")
    print(f"  ws sessions {s.ws_sessions}, events {s.ws_events} ({s.ws_events / elapsed:.0f}/s)")
    print(f"  {rss}")
    print(f"  errors {s.errors or 'none'}")
    ok = not world.problems and bounded
    for problem in world.problems[:20]:
        print("  PROBLEM", problem)
    if not bounded:
        print("  PROBLEM resident memory kept growing")
    print("  audit: every acknowledged chunk is in the log exactly once" if not world.problems
          else f"  audit FAILED: {len(world.problems)} problems")  # fmt: skip
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--database-url", help="default: a temp SQLite file")
    parser.add_argument("--redis-url", help="default: the in-process broker")
    parser.add_argument("--url", help="soak a server already running (give --database-url)")
    parser.add_argument("--pid", type=int, help="that server's pid, for RSS sampling")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
