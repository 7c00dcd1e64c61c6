"""The SQL statements a database's engines send, to a listener, for a test's checks.

Every engine of the database is listened to unless a test picks some: analytics reads
run on a pool of their own (`Database.read_generic`), which the main engine's listener
would miss."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextmanager
def listening(engines: Iterable[AsyncEngine], note: Callable[..., None]) -> Iterator[None]:
    """`note` called meanwhile before each statement any of `engines` sends, as
    SQLAlchemy's `before_cursor_execute` listener: (connection, cursor, statement,
    parameters, context, executemany)."""
    syncs = [engine.sync_engine for engine in engines]
    for engine in syncs:
        event.listen(engine, "before_cursor_execute", note)
    try:
        yield
    finally:
        for engine in syncs:
            event.remove(engine, "before_cursor_execute", note)


@contextmanager
def sent(engines: Iterable[AsyncEngine]) -> Iterator[list[tuple[str, Any]]]:
    """The (statement, parameters) `engines` send meanwhile, in order."""
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    with listening(engines, note):
        yield seen
