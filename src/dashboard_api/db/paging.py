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
from sqlalchemy import ColumnElement, Select, false, func, literal, select, true, tuple_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute

from dashboard_api.db.dialect import dialect_of
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
    # The values of `paginate`'s `extras`, read in the same statement as the page.
    extras: tuple[Any, ...] = ()

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
# Given an offset: a SELECT of the ordering's keys of the row there (no row past the
# end), to run inside the page query itself, and the values of its bind parameters;
# None when it cannot tell.
Seeker = Callable[[int], Awaitable[tuple[Select[Any], dict[str, Any]] | None]]

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
    seek: Seeker | None = None,
    extras: Sequence[ColumnElement[Any]] = (),
    reusable: bool = False,
) -> PageResult[T]:
    """Run a filtered SELECT one page at a time.

    `stmt` selects the row columns and applies the filters; the ordering keys are appended
    as extra columns. `count_stmt` (a query) or `count` (a coroutine function), when
    given, count the filtered rows more cheaply than wrapping `stmt`. `total_expression`
    (an uncorrelated scalar subquery, evaluated once) rides along as a column of the page
    query instead: one round trip for both, and a second query only for an empty page.
    `locate`, when given, may find a deep page's first key faster than the index can
    (see `Locator`); `seek` does the same inside the page query (see `Seeker`): one
    statement, so one snapshot and one round trip. `extras` (uncorrelated scalar
    subqueries, with `total_expression` only) ride along the same way; their values come
    back in `PageResult.extras`.

    A deep page (from `SEEK_FROM_OFFSET`) with `total_expression` is one statement even
    when it is empty or the index must be walked (see `_deep_page`): page and total always
    come from one snapshot, however writes interleave.

    `reusable`: the caller passes the same `stmt`, `total_expression` and `extras`
    objects again for the same list, so the statement of a page before
    `SEEK_FROM_OFFSET` (no cursor) is kept and reused too (see `_reused`).
    """
    sources = (stmt, total_expression, ordering, *extras)
    kept = _kept(sources, request, reusable=reusable)
    if kept is not None:
        # Built before: nothing to build (building cost more than running it).
        return await _run_kept(session, kept, ordering, request, convert, sources[1], extras)
    direction = _directed(ordering.keys, ordering.descending)
    extra = [] if total_expression is None else [total_expression.label("page_total_")]
    extra += [e.label(f"page_extra_{i}") for i, e in enumerate(extras)]
    # `extras` may be long values: joined after the page is cut, not carried through a
    # sort of every candidate row (PostgreSQL spilled 200 MB to disk for 1,400 rows).
    base = stmt.add_columns(*([] if extras else extra), *ordering.keys)
    page_stmt = base.order_by(*direction).limit(request.per_page + 1)
    carried = len(extra)
    got: list[Any] = []

    def carrying(page: Select[Any]) -> Select[Any]:
        if not extras:
            return page
        rows = page.subquery("page_rows")
        body, keys = list(rows.c)[: -len(ordering.keys)], list(rows.c)[-len(ordering.keys) :]
        return select(*body, *extra, *keys).order_by(*_directed(keys, ordering.descending))

    async def total_of(rows: Sequence[Row[Any]]) -> int:
        got.clear()
        if total_expression is not None:
            if rows:
                values = tuple(rows[0][-len(ordering.keys) - carried : -len(ordering.keys)])
            else:
                values = tuple((await session.execute(select(*extra))).one())
            got.extend(values[1:])
            return int(values[0])
        if count is not None:
            return await count()
        counter = count_stmt
        if counter is None:
            counter = select(func.count()).select_from(stmt.order_by(None).subquery())
        return int((await session.execute(counter)).scalar_one())

    if request.cursor is not None:
        values = decode_cursor(ordering, request.cursor)
        bound = tuple_(*[_bind_like(k, v) for k, v in zip(ordering.keys, values, strict=True)])
        page_stmt = page_stmt.where(rows_after(ordering, bound))
    elif request.page is not None and request.page > 1:
        offset = (request.page - 1) * request.per_page
        if offset < SEEK_FROM_OFFSET:
            page_stmt = page_stmt.offset(offset)
        elif total_expression is not None and dialect_of(session).reuses_cte_results:
            deep_rows, carried_values = await _deep_page(
                session, stmt, ordering, request, offset, extra, seek=seek, locate=locate
            )
            got.extend(carried_values[1:])
            total = int(carried_values[0])
            return _result(ordering, request, deep_rows, convert, total, got)
        else:
            # Skipping rows with OFFSET still reads and projects each of them: find the
            # first row's key alone, then read the page from that key like a cursor page.
            found = await seek(offset) if seek is not None else None
            if found is not None:
                first = found[0].cte("page_first_key")
                bound = tuple_(*(select(c).scalar_subquery() for c in first.c))
                sought = page_stmt.where(_from(ordering, bound))
                rows = (await session.execute(carrying(sought), found[1])).all()
                total = await total_of(rows)
                if rows or total <= offset:
                    return _result(ordering, request, rows, convert, total, got)
                # A page exists, yet the seek found none: its counts disagree with the rows
                # (say, rollups kept by an older release). Walk the index instead.
            page_stmt = await _seek_by_index(session, stmt, ordering, page_stmt, offset, locate)

    final = _reused(carrying(page_stmt), sources, request, reusable=reusable)
    rows = (await session.execute(final)).all()
    total = await total_of(rows)
    return _result(ordering, request, rows, convert, total, got)


# Page statements of reused lists (`paginate(reusable=True)`), by the identity of what
# they are built from, their size and offset. SQLAlchemy computes the cache key of a new
# statement object by walking it (~0.7 ms for a task list page with its total); a kept
# one has it already. Each entry holds its sources, so no other object takes their ids.
_REUSED: dict[tuple[int, ...], tuple[tuple[Any, ...], Select[Any]]] = {}
_REUSED_MAX = 1024


def _same_objects(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _reused_key(sources: tuple[Any, ...], request: PageRequest) -> tuple[int, ...] | None:
    """The key of a page statement built from `sources` for `request`; None when it is not
    kept: only pages before `SEEK_FROM_OFFSET` in page mode are (a cursor's or a deep
    page's statement holds the values it starts from)."""
    offset = ((request.page or 1) - 1) * request.per_page
    if request.cursor is not None or offset >= SEEK_FROM_OFFSET:
        return None
    return (*(id(x) for x in sources), request.per_page, offset)


def _kept(sources: tuple[Any, ...], request: PageRequest, *, reusable: bool) -> Select[Any] | None:
    """The page statement kept for `sources` (the same objects, a total among them) and
    `request`, if any (see `_reused`)."""
    if not reusable or sources[1] is None:
        return None
    key = _reused_key(sources, request)
    kept = None if key is None else _REUSED.get(key)
    if kept is not None and _same_objects(kept[0], sources):
        return kept[1]
    return None


async def _run_kept(
    session: AsyncSession,
    kept: Select[Any],
    ordering: Ordering,
    request: PageRequest,
    convert: Callable[[Row[Any]], T],
    total_expression: Any,
    extras: Sequence[ColumnElement[Any]],
) -> PageResult[T]:
    """`paginate` with a kept page statement (carrying its total and extras)."""
    rows = (await session.execute(kept)).all()
    n_keys = len(ordering.keys)
    if rows:
        values = tuple(rows[0][-n_keys - 1 - len(extras) : -n_keys])
    else:
        extra = [e.label(f"page_extra_{i}") for i, e in enumerate(extras)]
        alone = select(total_expression.label("page_total_"), *extra)
        values = tuple((await session.execute(alone)).one())
    return _result(ordering, request, rows, convert, int(values[0]), values[1:])


def _reused(
    page_stmt: Select[Any], sources: tuple[Any, ...], request: PageRequest, *, reusable: bool
) -> Select[Any]:
    """The kept statement equal to `page_stmt` (built from `sources`, the same objects
    each time, for `request`), keeping this one when there is none (see `_reused_key`);
    `page_stmt` itself unless `reusable`."""
    key = _reused_key(sources, request) if reusable else None
    if key is None:
        return page_stmt
    kept = _REUSED.get(key)
    if kept is not None and _same_objects(kept[0], sources):
        return kept[1]
    if len(_REUSED) >= _REUSED_MAX:
        del _REUSED[next(iter(_REUSED))]
    _REUSED[key] = (sources, page_stmt)
    return page_stmt


async def _deep_page(
    session: AsyncSession,
    stmt: Select[Any],
    ordering: Ordering,
    request: PageRequest,
    offset: int,
    extra: Sequence[ColumnElement[Any]],
    *,
    seek: Seeker | None,
    locate: Locator | None,
) -> tuple[list[Row[Any]], tuple[Any, ...]]:
    """The rows of the page `offset` rows in, and the values of `extra` (the total first),
    read in one statement: seek, page and total in one snapshot (PostgreSQL, whose READ
    COMMITTED gives each statement its own).

    Skipping rows with OFFSET still reads and projects each of them: the page's first key
    is found alone (by `seek`, else by an index-only walk), and the page read from it like
    a cursor page. An empty page still returns `extra`, so that "no row here, yet the
    total says a page exists" (the seek's counts disagree with the rows: say, rollups kept
    by an older release) is never two snapshots disagreeing: taking the total in a second
    statement, a write committed in between sent the page to the index walk, and a walk
    whose key and page were two more statements returned a page one row off its total.
    """
    direction = [k.desc() if ordering.descending else k.asc() for k in ordering.keys]
    bare = stmt.add_columns(*ordering.keys).order_by(*direction).limit(request.per_page + 1)
    found = await seek(offset) if seek is not None else None
    if found is not None:
        first = found[0].cte("page_first_key")
        bound = tuple_(*(select(c).scalar_subquery() for c in first.c))
        rows, values = await _anchored(
            session, bare.where(_from(ordering, bound)), ordering, extra, found[1]
        )
        if rows or int(values[0]) <= offset:
            return rows, values
        # A page exists, yet the seek found none: its counts disagree with the rows.
    answered, key = await locate(offset) if locate is not None else (False, None)
    if answered:
        if key is None:
            page = bare.where(false())
        else:
            known = [literal(v, type_=k.type) for k, v in zip(ordering.keys, key, strict=True)]
            page = bare.where(_from(ordering, tuple_(*known)))
    else:
        key_stmt = stmt.with_only_columns(*ordering.keys, maintain_column_froms=True)
        walked = key_stmt.order_by(*direction).offset(offset).limit(1).cte("page_walked_key")
        bound = tuple_(*(select(c).scalar_subquery() for c in walked.c))
        page = bare.where(_from(ordering, bound))
    return await _anchored(session, page, ordering, extra, {})


async def _anchored(
    session: AsyncSession,
    page: Select[Any],
    ordering: Ordering,
    extra: Sequence[ColumnElement[Any]],
    params: dict[str, Any],
) -> tuple[list[Row[Any]], tuple[Any, ...]]:
    """Run `page` (row columns, then the ordering's keys) with `extra` columns joined
    after it is cut: its rows, and the values of `extra` even when it has none (the page
    is outer-joined to a one-row anchor, which then comes back alone, keys NULL)."""
    n_keys = len(ordering.keys)
    rows_of = page.subquery("page_rows")
    body, keys = list(rows_of.c)[:-n_keys], list(rows_of.c)[-n_keys:]
    order = [k.desc() if ordering.descending else k.asc() for k in keys]
    anchor = select(literal(1).label("one")).subquery("page_anchor")
    stmt = (
        select(*body, *extra, *keys).select_from(anchor.outerjoin(rows_of, true())).order_by(*order)
    )
    rows = list((await session.execute(stmt, params)).all())
    values = tuple(rows[0][-n_keys - len(extra) : -n_keys])
    # Every key of an ordering is NOT NULL: NULL keys are the anchor's row alone.
    return [r for r in rows if r[-1] is not None], values


async def _seek_by_index(
    session: AsyncSession,
    stmt: Select[Any],
    ordering: Ordering,
    page_stmt: Select[Any],
    offset: int,
    locate: Locator | None,
) -> Select[Any]:
    """`page_stmt` from the key of the row `offset` rows in, found by `locate` or by an
    index-only scan of the order's keys."""
    answered, first = await locate(offset) if locate is not None else (False, None)
    if not answered:
        direction = [k.desc() if ordering.descending else k.asc() for k in ordering.keys]
        key_stmt = stmt.with_only_columns(*ordering.keys, maintain_column_froms=True)
        key_stmt = key_stmt.order_by(*direction).offset(offset).limit(1)
        first = (await session.execute(key_stmt)).first()
    if first is None:
        return page_stmt.where(false())
    bound = tuple_(*[literal(v, type_=k.type) for k, v in zip(ordering.keys, first, strict=True)])
    return page_stmt.where(_from(ordering, bound))


def _directed(keys: Sequence[Any], descending: bool) -> list[Any]:
    """ORDER BY terms of `keys`, all in one direction."""
    return [k.desc() if descending else k.asc() for k in keys]


def rows_after(ordering: Ordering, bound: Any) -> ColumnElement[bool]:
    """Rows strictly after `bound` (a tuple of key values) in the order."""
    keys = tuple_(*ordering.keys)
    after: ColumnElement[bool] = keys < bound if ordering.descending else keys > bound
    return after


def _from(ordering: Ordering, bound: Any) -> ColumnElement[bool]:
    """Rows from `bound` (a tuple of key values) on, in the order."""
    keys = tuple_(*ordering.keys)
    start: ColumnElement[bool] = keys <= bound if ordering.descending else keys >= bound
    return start


def _result(
    ordering: Ordering,
    request: PageRequest,
    rows: Sequence[Row[Any]],
    convert: Callable[[Row[Any]], T],
    total: int,
    extras: Sequence[Any] = (),
) -> PageResult[T]:
    """The envelope of fetched rows (per_page + 1 at most: the extra one tells that more
    follow); the ordering's keys are the rows' last columns."""
    n_keys = len(ordering.keys)
    has_more = len(rows) > request.per_page
    rows = rows[: request.per_page]
    next_cursor = None
    if has_more and rows:
        next_cursor = encode_cursor(ordering, list(rows[-1][-n_keys:]))
    return PageResult(
        items=[convert(r) for r in rows],
        total=total,
        page=None if request.cursor is not None else (request.page or 1),
        per_page=request.per_page,
        pages=math.ceil(total / request.per_page) if total else 0,
        next_cursor=next_cursor,
        extras=tuple(extras),
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
