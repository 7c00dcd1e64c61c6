"""The partial id indexes (migration 0018) still serve the queries that read them.

`ix_tasks_{conversation,flow,user}_created` and `ix_tasks_parent` hold only the tasks that
have the id: a query comparing the id with a bound value implies that, and must still be
planned on the index (on PostgreSQL with sequential scans disabled, so that an empty
table's cheap scan does not hide an index the planner could not use).
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from sqlalchemy import text

from dashboard_api.db.dialect import dialect_of

CASES = [
    (
        "SELECT task_id FROM tasks WHERE conversation_id = :v "
        "ORDER BY created_at DESC, task_id DESC LIMIT 50",
        "ix_tasks_conversation_created",
    ),
    (
        "SELECT task_id FROM tasks WHERE flow_id = :v ORDER BY created_at DESC, task_id DESC "
        "LIMIT 50",
        "ix_tasks_flow_created",
    ),
    ("SELECT count(*) FROM tasks WHERE user_id = :v", "ix_tasks_user_created"),
    ("SELECT task_id FROM tasks WHERE parent_task_id = :v", "ix_tasks_parent"),
    (
        "SELECT event_id, status FROM task_events WHERE task_id = :v ORDER BY event_id",
        "ix_task_events_task",
    ),
]


@pytest.mark.parametrize(("query", "index"), CASES)
async def test_id_filters_are_planned_on_their_index(app: FastAPI, query: str, index: str) -> None:
    async with app.state.ctx.db.write() as session:
        if dialect_of(session).backend == "postgresql":
            await session.execute(text("SET LOCAL enable_seqscan = off"))
            plan = (await session.execute(text(f"EXPLAIN {query}"), {"v": "x"})).scalars().all()
        else:
            rows = await session.execute(text(f"EXPLAIN QUERY PLAN {query}"), {"v": "x"})
            plan = [row[-1] for row in rows]
    assert any(index in line for line in plan), plan
