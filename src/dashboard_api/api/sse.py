"""`GET /api/tasks/{task_id}/stream`: a task's output as Server-Sent Events, with resume."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import StreamingResponse

from dashboard_api.api.deps import CtxDep, UserRole, live_of
from dashboard_api.errors import NotFound
from dashboard_api.ids import TASK_ID_PATTERN
from dashboard_api.schemas.common import problem_responses

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


def _since(last_event_id: str | None, after_seq: int | None) -> int:
    if last_event_id is not None:
        with contextlib.suppress(ValueError):
            return max(0, int(last_event_id.strip()))
    return after_seq or 0


@router.get(
    "/{task_id}/stream",
    response_class=StreamingResponse,
    responses={
        **problem_responses(401, 403, 404),
        200: {
            "description": "`text/event-stream`: events `output` (id = seq, data "
            '`{"seq", "stream", "content"}`) and `status`; ends after the terminal status.',
            "content": {"text/event-stream": {}},
        },
    },
)
async def stream_task_output(
    ctx: CtxDep,
    _: UserRole,
    task_id: Annotated[str, Path(pattern=TASK_ID_PATTERN)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after_seq: Annotated[
        int | None, Query(ge=0, description="Resume after this seq (when no Last-Event-ID)")
    ] = None,
) -> StreamingResponse:
    """Stream a task's output from seq 1 (or after `Last-Event-ID`), then live."""
    body = await live_of(ctx).task_stream(task_id, _since(last_event_id, after_seq))
    if body is None:
        raise NotFound(f"No task {task_id!r}.")
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
