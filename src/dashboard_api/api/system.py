"""`/api/status` (users) and `/metrics` (open, or any valid token when the setting says so)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dashboard_api.api.deps import CtxDep, UserRole
from dashboard_api.observability.setup import metrics_of
from dashboard_api.schemas.agents import SystemStatus
from dashboard_api.schemas.common import problem_responses
from dashboard_api.services.authentication import authenticate
from dashboard_api.services.status import system_status, task_counts_by_status

router = APIRouter(tags=["system"])
_bearer = HTTPBearer(auto_error=False)


@router.get("/api/status", response_model=SystemStatus, responses=problem_responses(401, 403, 503))
async def status(ctx: CtxDep, _: UserRole) -> SystemStatus:
    """Components (each checked within the dependency timeout), realtime, tasks and agents.

    `status` is `degraded` when a component is down; the answer is still 200 so that the
    dashboard can show which. A caller whose token cannot be checked because the database
    is down gets a 503 naming it.
    """
    return await system_status(ctx)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(
    ctx: CtxDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    """Prometheus metrics of this replica (any valid token when `metrics_require_token`)."""
    if ctx.settings.metrics_require_token:
        await authenticate(ctx, credentials.credentials if credentials else None)
    m = metrics_of(ctx)
    await m.refresh_task_counts(
        lambda statuses: task_counts_by_status(ctx, statuses),
        timeout=ctx.settings.dependency_timeout_seconds,
    )
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
