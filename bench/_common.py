"""What every database benchmark needs: its own PostgreSQL database, the CLI, timing."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

PG_HOST = os.environ.get("DASHBOARD_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DASHBOARD_BENCH_PG_PORT", "5432"))
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


async def recreate_db(database: str) -> None:
    conn = await connect()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def cli(*args: str, env: dict[str, str]) -> str:
    """Run `dashboard-api ARGS` from this virtualenv; its stdout."""
    out = subprocess.run(
        [str(BIN / "dashboard-api"), *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
