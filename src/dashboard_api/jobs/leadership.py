"""Who leads a periodic job: one replica at a time per job.

A lead is a named lock of the database's dialect (db/dialect/locks.py): on PostgreSQL a
session advisory lock per job, held on one dedicated connection of this replica for as
long as it leads (a replica that dies, or whose connection does, loses its leads, and
another takes them at its next tick); on SQLite, where one process owns the database
file (`serve --workers` needs PostgreSQL), the lead is decided in the process, per
database file, so that several apps in one process (tests) still get one leader per job.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from dashboard_api.db.engine import Database


class Leadership(Protocol):
    """Decides, job by job, whether this replica runs it."""

    async def hold(self, job: str) -> bool:
        """Whether this replica leads `job` now, taking the lead when it is free. Raises
        when that cannot be known (the database is down): the caller treats it as False."""
        ...

    async def close(self) -> None:
        """Give up every lead held (another replica takes them at its next tick)."""
        ...


def lock_key(job: str) -> int:
    """The advisory lock key of a job: a stable signed 64-bit hash of its name."""
    digest = hashlib.blake2b(f"dashboard_api.jobs:{job}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def leadership_for(db: Database, *, timeout: float = 5.0) -> Leadership:
    """The leads of this replica's jobs on `db` (see the module's docstring)."""
    return db.dialect.exclusive_locks(db.url, owner=db, timeout=timeout, key=lock_key, what="job")
