"""Keyset pagination shared by every list: page mode and cursor mode walk one order."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import ColumnElement, Select, false, func, literal, select, tuple_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute

from dashboard_api.errors import Unprocessable
from dashboard_api.timeutil import to_utc

T = TypeVar("T")
SortKeyExpr = ColumnElement[Any] | QueryableAttribute[Any]


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What the client asked for: `page` or `cursor` (never both), and `per_page`."""

    per_page: int = 50
    page: int | None = None
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class PageResult(Sequence[T]):
    items: list[T]
    total: int
    page: int | None
    per_page: int
    pages: int
    next_cursor: str | None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        return self.items[i]


@dataclass(frozen=True, slots=True)
class Ordering:
    """A total order: key expressions (the last one unique), all in one direction.

    `name` is embedded in cursors so that a cursor from another order is refused.
    """

    name: str
    keys: tuple[SortKeyExpr, ...]
    descending: bool


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": to_utc(value).isoformat()}
    return value


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _decode_value(value: Any) -> Any:
    # Every key of an ordering is NOT NULL (nulls are coalesced away), so None is malformed.
    if isinstance(value, dict) and set(value) == {"t"} and isinstance(value["t"], str):
        return to_utc(datetime.fromisoformat(value["t"]))
    if isinstance(value, bool):
        raise ValueError("bad cursor value")
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise ValueError("cursor integer out of range")
        return value
    if isinstance(value, str):
        # Text the database cannot store (NUL, lone surrogates) cannot be a stored key.
        if "\x00" in value:
            raise ValueError("bad cursor value")
        value.encode("utf-8")
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError("bad cursor value")


def encode_cursor(ordering: Ordering, values: Sequence[Any]) -> str:
    raw = orjson.dumps({"o": ordering.name, "k": [_encode_value(v) for v in values]})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(ordering: Ordering, cursor: str) -> list[Any]:
    """The key values in a cursor; 422 for anything malformed or from another ordering."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(data, dict) or data.get("o") != ordering.name:
            raise ValueError("cursor belongs to another ordering")
        keys = data["k"]
        if not isinstance(keys, list) or len(keys) != len(ordering.keys):
            raise ValueError("wrong number of keys")
        return [_decode_value(v) for v in keys]
    except (
        ValueError,
        KeyError,
        TypeError,
        OverflowError,
        binascii.Error,
        UnicodeError,
        orjson.JSONDecodeError,
    ):
        raise Unprocessable("Malformed cursor.", loc=["query", "cursor"]) from None


# Given an offset: (True, the ordering's key values of the row there, or None past the
# end), or (False, None) when it cannot tell and the index must be walked.
Locator = Callable[[int], Awaitable[tuple[bool, Sequence[Any] | None]]]

# From this offset on, page mode seeks to the page's first key instead of using OFFSET.
SEEK_FROM_OFFSET = 1000


async def paginate(
    session: AsyncSession,
    stmt: Select[Any],
    ordering: Ordering,
    request: PageRequest,
    *,
    convert: Callable[[Row[Any]], T],
    count_stmt: Select[Any] | None = None,
    count: Callable[[], Awaitable[int]] | None = None,
    total_expression: ColumnElement[Any] | None = None,
    locate: Locator | None = None,
) -> PageResult[T]:
    """Run a filtered SELECT one page at a time.

    `stmt` selects the row columns and applies the filters; the ordering keys are appended
    as extra columns. `count_stmt` (a query) or `count` (a coroutine function), when
    given, count the filtered rows more cheaply than wrapping `stmt`. `total_expression`
    (an uncorrelated scalar subquery, evaluated once) rides along as a column of the page
    query instead: one round trip for both, and a second query only for an empty page.
    `locate`, when given, may find a deep page's first key faster than the index can
    (see `Locator`).
    """
    n_keys = len(ordering.keys)
    direction = [k.desc() if ordering.descending else k.asc() for k in ordering.keys]
    extra = [] if total_expression is None else [total_expression.label("page_total_")]
    base = stmt.add_columns(*extra, *ordering.keys)
    page_stmt = base.order_by(*direction).limit(request.per_page + 1)
    if request.cursor is not None:
        values = decode_cursor(ordering, request.cursor)
        key_tuple = tuple_(*ordering.keys)
        bound = tuple_(*[_bind_like(k, v) for k, v in zip(ordering.keys, values, strict=True)])
        page_stmt = page_stmt.where(key_tuple < bound if ordering.descending else key_tuple > bound)
    elif request.page is not None and request.page > 1:
        offset = (request.page - 1) * request.per_page
        if offset < SEEK_FROM_OFFSET:
            page_stmt = page_stmt.offset(offset)
        else:
            # Skipping rows with OFFSET still reads and projects each of them. Find the
            # first row's key alone (the order's index covers it: an index-only scan),
            # then read the page from that key like a cursor page.
            answered, first = await locate(offset) if locate is not None else (False, None)
            if not answered:
                key_stmt = stmt.with_only_columns(*ordering.keys, maintain_column_froms=True)
                key_stmt = key_stmt.order_by(*direction).offset(offset).limit(1)
                first = (await session.execute(key_stmt)).first()
            if first is None:
                page_stmt = page_stmt.where(false())
            else:
                key_tuple = tuple_(*ordering.keys)
                bound = tuple_(
                    *[literal(v, type_=k.type) for k, v in zip(ordering.keys, first, strict=True)]
                )
                page_stmt = page_stmt.where(
                    key_tuple <= bound if ordering.descending else key_tuple >= bound
                )

    rows = (await session.execute(page_stmt)).all()
    has_more = len(rows) > request.per_page
    rows = rows[: request.per_page]
    next_cursor = None
    if has_more and rows:
        next_cursor = encode_cursor(ordering, list(rows[-1][-n_keys:]))

    if total_expression is not None:
        if rows:
            total = int(rows[0][-n_keys - 1])
        else:
            total = int((await session.execute(select(total_expression))).scalar_one())
    elif count is not None:
        total = await count()
    else:
        if count_stmt is None:
            count_stmt = select(func.count()).select_from(stmt.order_by(None).subquery())
        total = int((await session.execute(count_stmt)).scalar_one())
    page = None if request.cursor is not None else (request.page or 1)
    return PageResult(
        items=[convert(r) for r in rows],
        total=total,
        page=page,
        per_page=request.per_page,
        pages=math.ceil(total / request.per_page) if total else 0,
        next_cursor=next_cursor,
    )


def _bind_like(key: SortKeyExpr, value: Any) -> ColumnElement[Any]:
    """A bind parameter typed like its key; a cursor value of the wrong type is a 422."""
    # A TypeDecorator (e.g. UTCDateTime) knows its Python type only through its impl.
    type_ = getattr(key.type, "impl", key.type)
    try:
        expected: type | None = type_.python_type
    except NotImplementedError:
        expected = None
    if expected is not None and not isinstance(value, expected):
        raise Unprocessable("Malformed cursor.", loc=["query", "cursor"])
    return literal(value, type_=key.type)
