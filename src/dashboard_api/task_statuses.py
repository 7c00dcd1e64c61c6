"""A task's statuses, defined once for the database, the wire, the hub and the client."""

from __future__ import annotations

from typing import Literal

TaskStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
TASK_STATUSES: tuple[TaskStatus, ...] = ("queued", "running", "completed", "failed", "cancelled")
# A task in one of these never changes again (its stream ends, its hooks have run).
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
# Why a task failed: its lease ran out (the lease reaper), or a producer reported it.
FailureReason = Literal["lease_expired", "agent"]
FAILURE_REASONS: tuple[FailureReason, ...] = ("lease_expired", "agent")
