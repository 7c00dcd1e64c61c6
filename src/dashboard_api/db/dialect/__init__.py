"""Every difference between PostgreSQL and SQLite, in one place: the `Dialect`.

A `Database` chooses its dialect once, from its URL, and every session it makes carries
it (`dialect_of(session)`). `base.py` says what a dialect does; `postgresql.py` and
`sqlite.py` do it; `locks.py` holds the named locks that decide who leads a periodic
job; `values.py` reads what the dialects' aggregates give, the same on both.
"""

from __future__ import annotations

from dashboard_api.db.dialect.base import WRITE_OPTION, Dialect, OutputAppend
from dashboard_api.db.dialect.choice import (
    POSTGRESQL,
    SESSION_KEY,
    SQLITE,
    dialect_for_url,
    dialect_named,
    dialect_of,
    dialect_serving,
)

# The session-first forms, for callers not yet moved to `dialect_of(session)`.
from dashboard_api.db.dialect.session_forms import (
    add_primary_key as add_primary_key,
)
from dashboard_api.db.dialect.session_forms import (
    advisory_xact_lock_sql as advisory_xact_lock_sql,
)
from dashboard_api.db.dialect.session_forms import (
    analyze_tables as analyze_tables,
)
from dashboard_api.db.dialect.session_forms import (
    backend_of as backend_of,
)
from dashboard_api.db.dialect.session_forms import (
    bisect_instants as bisect_instants,
)
from dashboard_api.db.dialect.session_forms import (
    bisect_sql as bisect_sql,
)
from dashboard_api.db.dialect.session_forms import (
    clear_tables as clear_tables,
)
from dashboard_api.db.dialect.session_forms import (
    contains_ci as contains_ci,
)
from dashboard_api.db.dialect.session_forms import (
    drop_primary_key as drop_primary_key,
)
from dashboard_api.db.dialect.session_forms import (
    epoch_bucket as epoch_bucket,
)
from dashboard_api.db.dialect.session_forms import (
    epoch_seconds_to_ts as epoch_seconds_to_ts,
)
from dashboard_api.db.dialect.session_forms import (
    hour_bin as hour_bin,
)
from dashboard_api.db.dialect.session_forms import (
    hour_bin_seconds as hour_bin_seconds,
)
from dashboard_api.db.dialect.session_forms import (
    in_int_pairs as in_int_pairs,
)
from dashboard_api.db.dialect.session_forms import (
    in_ints as in_ints,
)
from dashboard_api.db.dialect.session_forms import (
    indexes_substrings as indexes_substrings,
)
from dashboard_api.db.dialect.session_forms import (
    insert_missing as insert_missing,
)
from dashboard_api.db.dialect.session_forms import (
    int_list_agg as int_list_agg,
)
from dashboard_api.db.dialect.session_forms import (
    int_rows_agg as int_rows_agg,
)
from dashboard_api.db.dialect.session_forms import (
    json_rows_agg as json_rows_agg,
)
from dashboard_api.db.dialect.session_forms import (
    lock_for_update as lock_for_update,
)
from dashboard_api.db.dialect.session_forms import (
    lock_skip_locked as lock_skip_locked,
)
from dashboard_api.db.dialect.session_forms import (
    lock_tables_exclusive as lock_tables_exclusive,
)
from dashboard_api.db.dialect.session_forms import (
    log_bin as log_bin,
)
from dashboard_api.db.dialect.session_forms import (
    micros_between as micros_between,
)
from dashboard_api.db.dialect.session_forms import (
    prepare_large_sort as prepare_large_sort,
)
from dashboard_api.db.dialect.session_forms import (
    prepare_log_bin as prepare_log_bin,
)
from dashboard_api.db.dialect.session_forms import (
    reuses_cte_results as reuses_cte_results,
)
from dashboard_api.db.dialect.session_forms import (
    select_for_update_by_keys as select_for_update_by_keys,
)
from dashboard_api.db.dialect.session_forms import (
    try_advisory_xact_lock_sql as try_advisory_xact_lock_sql,
)
from dashboard_api.db.dialect.session_forms import (
    update_by_keys as update_by_keys,
)
from dashboard_api.db.dialect.session_forms import (
    upsert as upsert,
)
from dashboard_api.db.dialect.session_forms import (
    upsert_add_many as upsert_add_many,
)
from dashboard_api.db.dialect.values import escape_like, int_list, int_pairs_params, int_rows


def require_supported_server(dialect_name: str, version: tuple[int | str, ...] | None) -> None:
    """Refuse (with the reason) a server older than the service needs (migrations call it)."""
    dialect_named(dialect_name).check_server_version(version)


__all__ = [
    "POSTGRESQL",
    "SESSION_KEY",
    "SQLITE",
    "WRITE_OPTION",
    "Dialect",
    "OutputAppend",
    "dialect_for_url",
    "dialect_named",
    "dialect_of",
    "dialect_serving",
    "escape_like",
    "int_list",
    "int_pairs_params",
    "int_rows",
    "require_supported_server",
]
