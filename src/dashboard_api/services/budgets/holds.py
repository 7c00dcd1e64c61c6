"""What the claim statement adds so that it hands out no queued task of a held scope.

A `hold` budget that reaches its limit gets `held_until` (the end of its period) in the
same transaction as the task write that reached it (`service.on_task_written`). The
claim statement carries this condition itself, so a claim either runs before that
transaction committed (the limit was not reached yet) or sees the hold: two claims on
two replicas cannot both slip past a budget already at its limit, and no check can go
stale between a read and the update. When the period ends the condition stops matching
by itself (nothing has to clear it); raising the limit clears it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, or_

from dashboard_api.db.models.guards import Budget

_B = Budget.__table__.c


def not_held(tasks: Any, now: datetime) -> ColumnElement[bool]:
    """True for a task row (of the table `tasks`) that no budget holds at `now`."""
    held = exists().where(
        _B.held_until > now,
        *(
            or_(
                getattr(_B, f"scope_{name}").is_(None),
                getattr(_B, f"scope_{name}") == getattr(tasks.c, name),
            )
            for name in ("agent_type", "user_id", "source", "flow_id")
        ),
    )
    return ~held
