"""`dashboard-api tail TASK_ID`: print a task's output live; exit 0 when the task ends."""

from __future__ import annotations

import sys
from typing import TextIO

from dashboard_api.client.api import ApiError, DashboardClient, StreamError


async def tail(
    base_url: str,
    token: str,
    task_id: str,
    *,
    since_seq: int = 0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Follow the task until it ends. 0: ended; 1: no such task; 2: refused."""
    out = out or sys.stdout
    err = err or sys.stderr
    async with DashboardClient(base_url, token) as client:
        try:
            async for event in client.follow(task_id, since_seq=since_seq):
                if event.kind == "output" and event.content is not None:
                    out.write(event.content)
                    out.flush()
                elif event.terminal:
                    err.write(f"\n[task {task_id} {event.status}]\n")
                    err.flush()
                    return 0
        except StreamError as exc:
            err.write(f"tail: {exc}\n")
            return 1 if exc.code == "not_found" else 2
        except ApiError as exc:
            err.write(f"tail: {exc}\n")
            return 2
    return 0
