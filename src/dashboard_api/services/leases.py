"""Lease arithmetic shared by tasks and index jobs (docs/api.md §13).

A running task or index job holds a lease until `lease_expires_at`; its producer's calls
renew it to `now + lease_seconds`. Renewal is lazy: only when less than half the lease is
left, so that a producer streaming output does not rewrite the lease
with every chunk. After any producer call at least half of the lease is left.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

# The error an expired task or job is failed with, and its task `failure_reason`.
LEASE_EXPIRED_ERROR = "lease expired"
LEASE_EXPIRED = "lease_expired"
# The `failure_reason` of a failure a producer reported.
REPORTED_BY_AGENT = "agent"
MIN_LEASE_SECONDS = 10
MAX_LEASE_SECONDS = 86_400


def lease_end(now: datetime, seconds: int) -> datetime:
    """When a lease taken or renewed at `now` runs out."""
    return now + timedelta(seconds=seconds)


def renewal_due(expires_at: datetime | None, seconds: int, now: datetime) -> bool:
    """Whether a producer call at `now` must renew the lease (less than half is left)."""
    return expires_at is None or expires_at - now < timedelta(seconds=seconds / 2)


def renewed(expires_at: datetime | None, seconds: int, now: datetime) -> datetime | None:
    """The new end of a lease after a producer call at `now`, or None when it stays."""
    return lease_end(now, seconds) if renewal_due(expires_at, seconds, now) else None


# Where an app's default lease length travels: the info of every session of its
# database (set by create_app, like the task hooks), so that every task write path knows
# it without a parameter.
LEASE_SECONDS_KEY = "task_lease_seconds"
DEFAULT_LEASE_SECONDS = 300


def default_lease_seconds(session: Any) -> int:
    """The app's DASHBOARD_TASK_LEASE_SECONDS, as handed to this session."""
    return int(session.info.get(LEASE_SECONDS_KEY, DEFAULT_LEASE_SECONDS))
