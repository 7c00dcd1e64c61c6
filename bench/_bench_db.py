"""The database a benchmark seeds and reads, on either backend (`--backend`).

PostgreSQL: a database of its own on the shared server, read with asyncpg. SQLite (the
embedded default): a file, `/tmp/NAME.sqlite3` (or NAME itself when it is a path), read
with the standard library's driver through a connection that takes the same statements
as asyncpg's: `$N` parameters, ILIKE (SQLite's LIKE folds ASCII letters, as the needles
the benchmarks use are), datetimes bound and read in the service's storage form.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench._common import connect, db_url, recreate_db, task_count

Backend = Literal["postgresql", "sqlite"]
BACKENDS: tuple[Backend, ...] = ("postgresql", "sqlite")
_PARAM = re.compile(r"\$(\d+)")
_ILIKE = re.compile(r"\bILIKE\b", re.IGNORECASE)


def _read_timestamp(raw: bytes) -> datetime:
    # Stored as naive UTC text, 'YYYY-MM-DD HH:MM:SS[.ffffff]'.
    return datetime.fromisoformat(raw.decode()).replace(tzinfo=UTC)


# Columns declared DATETIME (every timestamp of the schema) read as aware datetimes.
sqlite3.register_converter("DATETIME", _read_timestamp)


def _bind(value: Any) -> Any:
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo else value
        return utc.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class SQLiteConnection:
    """The part of asyncpg's connection the benchmarks use, on a SQLite file. Calls run in
    the event loop's thread: the benchmarks await them one at a time."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, detect_types=sqlite3.PARSE_DECLTYPES, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.isolation_level = None  # autocommit, as asyncpg outside a transaction
        self._db.execute("PRAGMA foreign_keys=ON")

    def _run(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        sql = _ILIKE.sub("LIKE", _PARAM.sub(r"?\1", sql))
        return self._db.execute(sql, [_bind(a) for a in args])

    async def fetch(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self._run(sql, args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._run(sql, args).fetchone()
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self._run(sql, args).fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> str:
        self._run(sql, args)
        return ""

    async def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class BenchDB:
    backend: Backend
    name: str

    @property
    def path(self) -> str:
        return self.name if "/" in self.name else f"/tmp/{self.name}.sqlite3"  # noqa: S108

    @property
    def url(self) -> str:
        return f"sqlite+aiosqlite:///{self.path}" if self.backend == "sqlite" else db_url(self.name)

    async def connect(self) -> Any:
        """An asyncpg connection, or its SQLite stand-in."""
        return SQLiteConnection(self.path) if self.backend == "sqlite" else await connect(self.name)

    async def has_table(self, table: str) -> bool:
        conn = await self.connect()
        try:
            if self.backend == "sqlite":
                sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1"
                return bool(await conn.fetchval(sql, table))
            return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
        finally:
            await conn.close()

    async def task_count(self) -> int | None:
        """Tasks in it; None when the database or the table is missing."""
        if self.backend == "postgresql":
            return await task_count(self.name)
        if not Path(self.path).exists() or not await self.has_table("tasks"):
            return None
        conn = await self.connect()
        try:
            return int(await conn.fetchval("SELECT count(*) FROM tasks"))
        finally:
            await conn.close()

    async def recreate(self) -> None:
        """Empty: dropped and created again (PostgreSQL), the file removed (SQLite)."""
        if self.backend == "postgresql":
            await recreate_db(self.name)
            return
        for suffix in ("", "-wal", "-shm"):
            Path(self.path + suffix).unlink(missing_ok=True)

    async def vacuum_analyze(self, tables: Sequence[str] = ()) -> float | None:
        """PostgreSQL after a bulk load: visibility map and planner statistics (all
        tables when none are named); seconds taken. SQLite: nothing (None), as the
        service never runs ANALYZE on its file: the figures are a user's."""
        if self.backend == "sqlite":
            return None
        conn = await self.connect()
        try:
            start = time.perf_counter()
            for table in tables or [""]:
                await conn.execute(f"VACUUM ANALYZE {table}".strip())
            return time.perf_counter() - start
        finally:
            await conn.close()

    def size_bytes(self) -> int | None:
        """The SQLite file's size (with its write-ahead log); None on PostgreSQL."""
        if self.backend == "postgresql":
            return None
        return sum(
            os.path.getsize(self.path + s) for s in ("", "-wal") if os.path.exists(self.path + s)
        )
