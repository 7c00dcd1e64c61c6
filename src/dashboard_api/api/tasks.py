"""`/api/tasks`: reading tasks (users) and producing them (agents)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from dashboard_api.api.deps import (
    ANY_ROLE,
    MULTI_DESCRIPTION,
    NO_NUL,
    AgentRole,
    AnyRole,
    CtxDep,
    FailureReasonFilter,
    MultiFilter,
    PageDep,
    UserRole,
    choice_items,
    split_multi,
)
from dashboard_api.api.lean import LeanRoute, lean_path, lean_principal
from dashboard_api.api.tasks_query import TASK_ID, parse_list_query
from dashboard_api.context import AppContext
from dashboard_api.db.paging import PageRequest
from dashboard_api.errors import Unprocessable
from dashboard_api.ids import TASK_ID_PATTERN
from dashboard_api.observability.setup import metrics_of
from dashboard_api.schemas.common import Page, problem_responses
from dashboard_api.schemas.tasks import (
    ChunkOut,
    FullLog,
    OutputAppend,
    OutputAppended,
    SortKey,
    StatusEventOut,
    TaskClaim,
    TaskCreate,
    TaskPublic,
    TaskSummary,
    TaskUpdate,
    task_public,
)
from dashboard_api.schemas.tasks_json import dumps, page_json, public_doc, ts
from dashboard_api.services import task_export as export
from dashboard_api.services import tasks as service
from dashboard_api.task_statuses import FAILURE_REASONS, TASK_STATUSES
from dashboard_api.timeutil import UtcDateTime

# LeanRoute: the list and a task are read by a lean path first (api/lean.py).
router = APIRouter(
    prefix="/api/tasks",
    tags=["tasks"],
    responses=problem_responses(401, 403, 422),
    route_class=LeanRoute,
)
TaskIdPath = Annotated[str, Path(pattern=TASK_ID_PATTERN)]


async def task_filters(  # async: a plain def would run in the thread pool (a hop per request)
    status: Annotated[
        list[Annotated[str, choice_items(TASK_STATUSES)]] | None,
        Query(description=MULTI_DESCRIPTION),
    ] = None,
    agent_type: MultiFilter = None,
    source: MultiFilter = None,
    created_after: UtcDateTime | None = None,
    created_before: UtcDateTime | None = None,
    conversation_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL)] = None,
    flow_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL)] = None,
    user_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL)] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=1000, pattern=NO_NUL, description="Case-insensitive substring of the input"
        ),
    ] = None,
    failure_reason: FailureReasonFilter = None,
) -> service.TaskFilters:
    """The task list's filters (the list and the export take the same ones)."""
    return service.TaskFilters(
        status=split_multi(status, name="status", allowed=TASK_STATUSES),
        agent_type=split_multi(agent_type, name="agent_type"),
        source=split_multi(source, name="source"),
        created_after=created_after,
        created_before=created_before,
        conversation_id=conversation_id,
        flow_id=flow_id,
        user_id=user_id,
        q=q,
        failure_reason=split_multi(failure_reason, name="failure_reason", allowed=FAILURE_REASONS),
    )


TaskFiltersDep = Annotated[service.TaskFilters, Depends(task_filters)]


@router.get("", response_model=Page[TaskSummary])
async def list_tasks(
    ctx: CtxDep, _: AnyRole, page: PageDep, filters: TaskFiltersDep, sort: SortKey = "-created_at"
) -> Response:
    """Task summaries, filtered and sorted; page or cursor mode."""
    return await _list_page(ctx, filters, sort, page)


@lean_path(list_tasks)
async def _list_tasks_lean(request: Request) -> Response | None:
    query = parse_list_query(request.query_params)
    if query is None:
        return None
    await lean_principal(request, ANY_ROLE)
    return await _list_page(request.app.state.ctx, query.filters, query.sort, query.page)


async def _list_page(
    ctx: AppContext, filters: service.TaskFilters, sort: str, page: PageRequest
) -> Response:
    async with ctx.db.read_statements() as session:
        result = await service.list_tasks(session, filters=filters, sort=sort, page=page)
    # Written directly (same document as Page[TaskSummary], which stays the documented
    # model): validating and serializing 50 models cost more than the queries.
    return Response(page_json(result), media_type="application/json")


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every matching task summary (the list's items, in its order): "
            "CSV with a header row, or JSON Lines (one summary object per line). Streamed.",
            "content": {
                export.MEDIA_TYPES["csv"]: {"schema": {"type": "string"}},
                export.MEDIA_TYPES["jsonl"]: {"schema": {"type": "string"}},
            },
        }
    },
)
async def export_tasks(
    ctx: CtxDep,
    _: UserRole,
    filters: TaskFiltersDep,
    format: Annotated[export.ExportFormat, Query(description="csv or jsonl")] = "csv",
    sort: SortKey = "-created_at",
) -> StreamingResponse:
    """Every task summary the list's filters match, streamed whatever the count."""
    stamp = ctx.clock.now().strftime("%Y%m%dT%H%M%SZ")
    body = export.export_body(
        ctx.db,
        filters=filters,
        sort=sort,
        format_=format,
        batch_size=ctx.settings.export_batch_rows,
        on_rows=partial(metrics_of(ctx).count_exported, format),
    )
    return StreamingResponse(
        body,
        media_type=export.MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="tasks-{stamp}.{format}"'},
    )


@router.post(
    "",
    status_code=201,
    response_model=TaskPublic,
    responses=problem_responses(409),
)
async def register_task(ctx: CtxDep, _: AgentRole, body: TaskCreate) -> Response:
    """Register a task (producer). An existing `task_id` is 409."""
    async with ctx.db.write() as session:
        task = await service.register_task(
            session, body=body, now=ctx.clock.now(), prices=ctx.prices
        )
    return _task_response(task, status_code=201)


@router.post(
    "/claim",
    response_model=TaskPublic,
    responses={204: {"description": "No queued task of those types"}},
)
async def claim_task(ctx: CtxDep, _: AgentRole, body: TaskClaim) -> Response:
    """Take the oldest queued task of the given types, atomically moving it to running,
    leased to the agent (`lease_seconds`; renew it with output, PATCH or heartbeats)."""
    agent_types = body.agent_type if isinstance(body.agent_type, list) else [body.agent_type]
    async with ctx.db.write() as session:
        task = await service.claim_task(
            session,
            agent_types=agent_types,
            agent=body.agent,
            now=ctx.clock.now(),
            lease_seconds=body.lease_seconds,
        )
    if task is None:
        return Response(status_code=204)
    return _task_response(task)


@router.get("/{task_id}", response_model=TaskPublic, responses=problem_responses(404))
async def get_task(ctx: CtxDep, _: AnyRole, task_id: TaskIdPath) -> Response:
    """One task."""
    return await _one_task(ctx, task_id)


@lean_path(get_task)
async def _get_task_lean(request: Request) -> Response | None:
    task_id = request.path_params["task_id"]
    if not TASK_ID.fullmatch(task_id):
        return None
    await lean_principal(request, ANY_ROLE)
    return await _one_task(request.app.state.ctx, task_id)


async def _one_task(ctx: AppContext, task_id: str) -> Response:
    async with ctx.db.read_statements() as session:
        row = await service.get_task_row(session, task_id)
    body = dumps(
        service.public_doc_of_row(row), lambda: task_public(row).model_dump_json().encode()
    )
    return Response(body, media_type="application/json")


@router.patch("/{task_id}", response_model=TaskPublic, responses=problem_responses(404, 409))
async def update_task(ctx: CtxDep, _: AgentRole, task_id: TaskIdPath, body: TaskUpdate) -> Response:
    """Update status (legal moves only), result, metrics or metadata (producer)."""
    async with ctx.db.write() as session:
        task = await service.update_task(
            session, task_id=task_id, body=body, now=ctx.clock.now(), prices=ctx.prices
        )
    return _task_response(task)


@router.post(
    "/{task_id}/output",
    response_model=OutputAppended,
    responses=problem_responses(404, 409, 413),
)
async def append_output(
    ctx: CtxDep, _: AgentRole, task_id: TaskIdPath, body: OutputAppend
) -> Response:
    """Append output chunks; they are durable once this answers."""
    chunks = body.as_chunks()
    settings = ctx.settings
    if len(chunks) > settings.max_chunks_per_request:
        raise Unprocessable(
            f"At most {settings.max_chunks_per_request} chunks per request.", loc=["body", "chunks"]
        )
    result = await service.store_output(
        ctx.db,
        task_id=task_id,
        chunks=chunks,
        now=ctx.clock.now(),
        cap_bytes=settings.output_cap_bytes,
        max_chunk_bytes=settings.max_chunk_bytes,
    )
    # Written directly (the same document as OutputAppended): the response model's
    # validation and serialization were a visible share of this hot path.
    doc = {
        "first_seq": result.first_seq,
        "last_seq": result.last_seq,
        "truncated": result.truncated,
    }
    return Response(orjson.dumps(doc), media_type="application/json")


@router.post(
    "/{task_id}/heartbeat",
    status_code=204,
    response_class=Response,
    responses=problem_responses(404, 409),
)
async def heartbeat_task(ctx: CtxDep, _: AgentRole, task_id: TaskIdPath) -> Response:
    """Renew a running task's lease (producer); 409 with the current status when the task
    is not running (its lease may have expired)."""
    async with ctx.db.write() as session:
        await service.heartbeat_task(session, task_id=task_id, now=ctx.clock.now())
    return Response(status_code=204)


@router.post(
    "/{task_id}/retry",
    status_code=201,
    response_model=TaskPublic,
    responses={
        200: {"model": TaskPublic, "description": "The retry made before"},
        **problem_responses(404, 409),
    },
)
async def retry_task(ctx: CtxDep, _: UserRole, task_id: TaskIdPath) -> Response:
    """Queue a retry of a failed or cancelled task (201); asking again answers the same
    retry (200). 409 with the current status for a task in any other status."""
    async with ctx.db.write() as session:
        task, created = await service.retry_task(
            session, task_id=task_id, now=ctx.clock.now(), prices=ctx.prices
        )
    if created:
        metrics_of(ctx).retries_created.labels("manual").inc()
    return _task_response(task, status_code=201 if created else 200)


@router.post("/{task_id}/cancel", response_model=TaskPublic, responses=problem_responses(404, 409))
async def cancel_task(ctx: CtxDep, _: UserRole, task_id: TaskIdPath) -> TaskPublic:
    """Cancel a queued task, or ask a running task's agent to stop."""
    async with ctx.db.write() as session:
        task = await service.cancel_task(session, task_id=task_id, now=ctx.clock.now())
        return task_public(task)


@router.get(
    "/{task_id}/logs/full",
    response_model=FullLog,
    responses={
        **problem_responses(404),
        200: {"content": {"text/plain": {}}, "description": "JSON log, or text with format=text"},
    },
)
async def full_log(
    ctx: CtxDep,
    _: AnyRole,
    task_id: TaskIdPath,
    after_seq: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    format: Literal["json", "text"] | None = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """The task, its status history and its output (all, or after `after_seq`)."""
    as_text = _wants_text(format, accept)
    async with ctx.db.read_statements() as session:
        task = await service.get_task_row(session, task_id)
        chunks = await service.chunk_rows(session, task_id, after_seq=after_seq)
        events = [] if as_text else await service.status_event_rows(session, task_id)
    output = "".join(c.content for c in chunks)
    if as_text:
        return PlainTextResponse(output)
    # The chunks are read after the task: an append committed in between shows up in
    # them, so the answer's last_seq must not lag what it returns.
    last_seq = max(task.output_seq, chunks[-1].seq if chunks else 0)
    doc = {
        "task": public_doc(task),
        "events": [{"type": "status", "status": e.status, "at": ts(e.at)} for e in events],
        "chunks": [
            {"seq": c.seq, "stream": c.stream, "content": c.content, "created_at": ts(c.created_at)}
            for c in chunks
        ],
        "output": output,
        "last_seq": last_seq,
        "truncated": bool(task.output_truncated),
    }

    def reference() -> bytes:
        return (
            FullLog(
                task=task_public(task),
                events=[StatusEventOut(status=e.status, at=e.at) for e in events],
                chunks=[
                    ChunkOut(seq=c.seq, stream=c.stream, content=c.content, created_at=c.created_at)
                    for c in chunks
                ],
                output=output,
                last_seq=last_seq,
                truncated=task.output_truncated,
            )
            .model_dump_json()
            .encode()
        )

    return Response(dumps(doc, reference), media_type="application/json")


def _wants_text(format_: str | None, accept: str | None) -> bool:
    if format_ is not None:
        return format_ == "text"
    if not accept:
        return False
    types = [part.split(";")[0].strip() for part in accept.split(",")]
    return "text/plain" in types and "application/json" not in types


def _task_response(task: Any, status_code: int = 200) -> Response:
    """A `TaskPublic` answer written directly from the committed row (like GET's): the
    model was built, validated again as the response model, then serialized."""
    body = dumps(public_doc(task), lambda: task_public(task).model_dump_json().encode())
    return Response(body, status_code=status_code, media_type="application/json")
