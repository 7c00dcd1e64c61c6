"""The session-first forms of the dialect's methods (`f(session, ...)` for
`dialect_of(session).f(...)`), for callers not yet moved to the dialect object."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect.base import Dialect
from dashboard_api.db.dialect.choice import dialect_of


def _of(session: AsyncSession) -> Dialect:
    return dialect_of(session)


def backend_of(session: AsyncSession) -> str:
    return _of(session).backend


def reuses_cte_results(session: AsyncSession) -> bool:
    return _of(session).reuses_cte_results


def indexes_substrings(session: AsyncSession) -> bool:
    return _of(session).indexes_substrings


def in_int_pairs(session: AsyncSession, *args: Any) -> ColumnElement[bool] | None:
    dialect = _of(session)
    return dialect.in_int_pairs(*args) if dialect.binds_arrays else None


def upsert(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).insert(*args, **kwargs)


def lock_for_update(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).lock_for_update(*args, **kwargs)


def lock_skip_locked(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).lock_skip_locked(*args, **kwargs)


def contains_ci(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).contains_ci(*args, **kwargs)


def epoch_seconds_to_ts(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).epoch_seconds_to_ts(*args, **kwargs)


def epoch_bucket(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).epoch_bucket(*args, **kwargs)


def hour_bin(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).hour_bin(*args, **kwargs)


def hour_bin_seconds(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).hour_bin_seconds(*args, **kwargs)


def micros_between(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).micros_between(*args, **kwargs)


def log_bin(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).log_bin(*args, **kwargs)


def int_list_agg(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).int_list_agg(*args, **kwargs)


def int_rows_agg(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).int_rows_agg(*args, **kwargs)


def json_rows_agg(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).json_rows_agg(*args, **kwargs)


def in_ints(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).in_ints(*args, **kwargs)


def bisect_sql(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).bisect_sql(*args, **kwargs)


def bisect_instants(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).bisect_instants(*args, **kwargs)


def advisory_xact_lock_sql(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).advisory_xact_lock_sql(*args, **kwargs)


def try_advisory_xact_lock_sql(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return _of(session).try_advisory_xact_lock_sql(*args, **kwargs)


async def prepare_log_bin(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).prepare_log_bin(session, *args, **kwargs)


async def lock_tables_exclusive(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).lock_tables_exclusive(session, *args, **kwargs)


async def insert_missing(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).insert_missing(session, *args, **kwargs)


async def select_for_update_by_keys(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).select_for_update_by_keys(session, *args, **kwargs)


async def update_by_keys(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).update_by_keys(session, *args, **kwargs)


async def upsert_add_many(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).upsert_add_many(session, *args, **kwargs)


async def prepare_large_sort(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).prepare_large_sort(session, *args, **kwargs)


async def clear_tables(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).clear_tables(session, *args, **kwargs)


async def drop_primary_key(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).drop_primary_key(session, *args, **kwargs)


async def add_primary_key(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).add_primary_key(session, *args, **kwargs)


async def analyze_tables(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
    return await _of(session).analyze_tables(session, *args, **kwargs)
