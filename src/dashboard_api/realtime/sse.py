"""`GET /api/tasks/{task_id}/stream`: a task's output as Server-Sent Events, with resume."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import StreamingResponse

from dashboard_api.api.deps import CtxDep, UserRole
from dashboard_api.errors import NotFound
from dashboard_api.ids import TASK_ID_PATTERN
from dashboard_api.realtime.events import TERMINAL_STATUSES, OutEvent
from dashboard_api.realtime.hub import Hub, QueueSink, TaskSubscription
from dashboard_api.schemas.common import problem_responses

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

KEEPALIVE_SECONDS = 15.0


def sse_frame(event: OutEvent) -> tuple[bytes | None, bool]:
    """The SSE text of a hub event, and whether it ends the stream."""
    payload = event.payload
    kind = event.type
    if kind == "task_output":
        data = orjson.dumps(
            {"seq": payload["seq"], "stream": payload["stream"], "content": payload["content"]}
        )
        return b"id: %d\nevent: output\ndata: %s\n\n" % (payload["seq"], data), False
    body = {k: v for k, v in payload.items() if k not in ("type", "channel")}
    if kind == "task_status":
        final = payload.get("status") in TERMINAL_STATUSES
        return b"event: status\ndata: %s\n\n" % orjson.dumps(body), final
    if kind == "task_cancel_requested":
        return b"event: cancel_requested\ndata: %s\n\n" % orjson.dumps(body), False
    return None, False


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
    hub: Hub = ctx.hub
    sink = QueueSink(ctx.settings.ws_send_queue_size)
    sub = TaskSubscription(hub, sink, f"task:{task_id}", task_id, _since(last_event_id, after_seq))
    state = await sub.open()
    if state is None:
        raise NotFound(f"No task {task_id!r}.")
    sub.start()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        event = await sink.get()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if event is None:
                    return  # overflowed: the client reconnects with Last-Event-ID
                frame, final = sse_frame(event)
                if frame is not None:
                    yield frame
                if final:
                    return
        finally:
            sink.close()
            await sub.close()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
