"""How each SQLite connection is set up: the pragmas that make the file safe for one writer
and many readers, its page cache and memory map, the functions the service's SQL calls,
and the BEGIN that takes the write lock up front."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from dashboard_api.db.dialect.base import WRITE_OPTION

# Each connection's page cache and memory map (settings `sqlite_cache_mb`, `sqlite_mmap_mb`).
# With a 2 MB cache a request at 1,000,000 tasks read its pages again from the operating
# system, up to ~25,000 read calls (page 10,001; a rare `q` 5,700, a task 3,000), most of
# its CPU and a wall at a loaded machine (bench.plans --backend sqlite, bench/README.md).
# The memory map reads the file through the operating system's page cache, shared by the
# connections, without a call or a copy per page; SQLite caps it at its build's maximum
# (2 GB in the usual builds): the page cache serves the rest of a larger file.
DEFAULT_CACHE_MB = 32
DEFAULT_MMAP_MB = 2048


def connect_hook(cache_mb: int, mmap_mb: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" hook emit BEGIN itself (the driver's implicit one cannot
        # be made IMMEDIATE), and make the file safe for concurrent readers and one writer.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a 2xx means the commit is on disk
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        # SQLite's defaults (a 2 MB page cache per connection, no memory map) read the
        # pages of a large file again through a system call at every request (see
        # DEFAULT_MMAP_MB). cache_size < 0: KiB rather than pages.
        cur.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        cur.execute(f"PRAGMA mmap_size={int(mmap_mb) * 1024 * 1024}")
        cur.close()
        dbapi_conn.create_function("dashboard_casefold", 1, casefold, deterministic=True)

    return on_connect


def casefold(value: str | None) -> str | None:
    return None if value is None else value.casefold()


def begin_hook(conn: Any) -> None:
    # Takes the write lock up front (BEGIN IMMEDIATE) for `Database.write`: a deferred
    # transaction that upgrades later can fail with "database is locked".
    mode = "IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else ""
    conn.exec_driver_sql(f"BEGIN {mode}".strip())
