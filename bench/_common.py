"""What every database benchmark needs: its own PostgreSQL database, the CLI, timing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

PG_HOST = os.environ.get("DASHBOARD_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DASHBOARD_BENCH_PG_PORT", "5432"))
REDIS_URL = os.environ.get("DASHBOARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def db_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"


async def connect(database: str = "test") -> asyncpg.Connection:
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=database)


async def task_count(database: str) -> int | None:
    """Tasks in the benchmark's database; None when the database or the table is missing."""
    conn = await connect()
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    finally:
        await conn.close()
    if not exists:
        return None
    conn = await connect(database)
    try:
        if not await conn.fetchval("SELECT to_regclass('tasks') IS NOT NULL"):
            return None
        return int(await conn.fetchval("SELECT count(*) FROM tasks"))
    finally:
        await conn.close()


async def drop_db(database: str) -> None:
    """Drop a benchmark's database, closing whatever is still connected to it."""
    conn = await connect()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


async def recreate_db(database: str, template: str | None = None) -> None:
    """Drop `database` if it exists and create it anew: empty, or a copy of `template`."""
    conn = await connect()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        copy_of = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{database}"{copy_of}')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(
    prefix: str, roles: Sequence[str]
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A new migrated database for one run, `prefix` + this process's id: its URL and a
    token per role (user id `bench-ROLE`). Dropped on exit."""
    from dashboard_api.db.engine import Database
    from dashboard_api.db.migrate import upgrade_to_head
    from dashboard_api.services.tokens import create_token
    from dashboard_api.timeutil import SystemClock

    name = f"{prefix}{os.getpid()}"
    await recreate_db(name)
    url = db_url(name)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        db = Database(url)
        tokens: dict[str, str] = {}
        async with db.write() as session:
            for role in roles:
                tokens[role], _ = await create_token(
                    session,
                    user_id=f"bench-{role}",
                    role=role,  # type: ignore[arg-type]
                    now=SystemClock().now(),
                )
        await db.dispose()
        yield url, tokens
    finally:
        await drop_db(name)


def cli(*args: str, env: dict[str, str]) -> str:
    """Run `dashboard-api ARGS` from this virtualenv; its stdout."""
    out = subprocess.run(
        [str(BIN / "dashboard-api"), *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server subprocess and wait for it. SIGINT, not SIGTERM: uvicorn shuts down
    gracefully on either, then raises the signal again, and only SIGINT (as
    KeyboardInterrupt) lets a `python -m cProfile` wrapper write its profile."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), 0 when unavailable. Unlike wall time it
    barely moves with what else the machine runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile: the ceil(p * n)-th smallest sample."""
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(p * len(ordered) - 1e-9)))
    return ordered[rank - 1]


async def timed(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """Milliseconds of `n` calls, after one warm-up call (plans, caches, connections)."""
    await call()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return out


class KeepAliveClient:
    """A minimal HTTP/1.1 client on one keep-alive connection.

    httpx spends about a millisecond of client CPU per request, which on a 2-core machine
    shared with the server is most of what a fast endpoint costs. This client sends the
    same real HTTP request over loopback and reads the whole response (Content-Length or
    chunked), so what it times is the server: parsing, the app, the database, writing.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.headers = headers or {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def get(
        self, path: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if params:
            path += "?" + urllib.parse.urlencode(params, doseq=True)
        return await self.request("GET", path, headers=headers)

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        status, body = await self.get(path, params)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        assert self._reader is not None
        assert self._writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in {**self.headers, **(headers or {})}.items()]
        if body or method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        fields = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            return status, await self._reader.readexactly(int(fields["content-length"]))
        if fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self._reader.readexactly(size + 2))
                if size == 0:
                    return status, b"".join(p[:-2] for p in parts)
        raise RuntimeError("response without a length")
