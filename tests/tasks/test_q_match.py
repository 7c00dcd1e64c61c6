"""`q` on SQLite (db/dialect.contains_ci): LIKE decides ASCII-only rows, the casefold
function the others; together exactly `needle.casefold() in text.casefold()`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import literal, select

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import Database

# ASCII letters and non-ASCII characters whose casefold differs, expands or lands in
# ASCII (sharp s -> ss, long s -> s, Kelvin sign -> k, dotted I, dotless i, final sigma,
# the fi ligature), LIKE's wildcards and its escape.
ALPHABET = "aAsSkKiIfx \u00df\u1e9e\u017f\u212a\u0130\u0131\u03a3\u03c3\u03c2\ufb01\u00e9\u00c9%_\\"


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    yield db
    await db.dispose()


@given(
    texts=st.lists(st.text(alphabet=ALPHABET, max_size=8), min_size=1, max_size=8),
    needle=st.text(alphabet=ALPHABET, min_size=1, max_size=3),
)
async def test_sqlite_q_is_casefolded_substring(
    sqlite_db: Database, texts: list[str], needle: str
) -> None:
    async with sqlite_db.read() as session:
        for text in texts:
            found = await session.execute(
                select(dialect_of(session).contains_ci(literal(text), needle))
            )
            assert bool(found.scalar_one()) == (needle.casefold() in text.casefold()), text
