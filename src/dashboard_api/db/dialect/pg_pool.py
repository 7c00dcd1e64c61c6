"""How the PostgreSQL pool hands out connections: session settings of the service's
connections, and a ping only for a connection idle long enough to have died unseen."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

# A pooled connection used this recently is handed out without a ping (HikariCP's
# "alive bypass window"). SQLAlchemy's pre-ping costs BEGIN, a query and ROLLBACK on every
# checkout, as much as a whole read request; a connection that died inside the window
# fails its query instead, which invalidates the pool (503 once, like any outage).
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT = "dashboard_returned_at"

# The service's queries are short and read through indexes, but some (a 30-day histogram
# sum, an exact count over a broad filter) are estimated above `jit_above_cost`: compiling
# them took 70 ms of a 125 ms answer that runs in 20 ms without. Maintenance commands
# (command_timeout None), whose scans of millions of rows gain from JIT, keep it.
SERVICE_SETTINGS = {"jit": "off"}

# The analytics reads' own connections (`Database.read_generic`). The driver prepares every
# statement, and PostgreSQL plans a prepared statement again on each execution (a custom
# plan) while a generic plan looks costlier to it; an analytics statement's parameters
# change with every request (the window moves), and planning was most of the summary's
# backend CPU (0.65 of 1.0 ms at 1M tasks). Their generic plans read the same buffers
# through the same indexes (`python -m bench.plans --generic`), planned once per
# connection. Other statements keep the default: a generic plan cannot see which
# partial index or how selective a filter value is. No parallel workers on these
# connections: a generic plan estimates a range parameter's rows from the table's size,
# not from the value, and at 10M tasks it started a Gather of workers for the few dozen
# raw tasks at a window's edge (11-12 ms each, against 0.8-2.6 ms for the same index
# scan run in the backend alone).
GENERIC_PLAN_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "max_parallel_workers_per_gather": "0",
}


def note_checkin(_dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def ping_if_idle(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is not None and time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
        return
    try:
        dbapi_conn.ping()
    except Exception as error:
        # The pool discards this connection and checks out another (or a new one).
        raise sa_exc.DisconnectionError(str(error)) from error
