"""The hub's `TaskHistory` (what `/ws` and SSE resume from), read through the tasks service."""

from __future__ import annotations

from typing import Any

from dashboard_api.db.engine import Database
from dashboard_api.db.models import Task
from dashboard_api.realtime.history import TaskState
from dashboard_api.schemas.tasks import task_summary
from dashboard_api.services.tasks import list_chunks
from dashboard_api.timeutil import format_ts


class ServiceTaskHistory:
    """Task state and stored chunks, read through the tasks service."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def task_state(self, task_id: str) -> TaskState | None:
        async with self.db.read() as session:
            task = await session.get(Task, task_id)
            if task is None:
                return None
            event = {"type": "task_status", **task_summary(task).model_dump(mode="json")}
            return TaskState(task.task_id, task.status, task.output_seq, event)

    async def chunks_after(self, task_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        async with self.db.read() as session:
            rows = await list_chunks(session, task_id, after_seq=after_seq, limit=limit)
            return [
                {
                    "seq": r.seq,
                    "stream": r.stream,
                    "content": r.content,
                    "created_at": format_ts(r.created_at),
                }
                for r in rows
            ]
