"""Liveness and readiness (open, no token)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dashboard_api.api.deps import CtxDep
from dashboard_api.errors import problem_body
from dashboard_api.services.status import probe_all

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


@router.get("/api/health", response_model=Health)
async def health() -> Health:
    """Answers while the process runs."""
    return Health()


@router.get(
    "/api/health/ready",
    response_model=Ready,
    responses={503: {"description": "A dependency is down; the problem names it"}},
)
async def ready(ctx: CtxDep) -> Ready | JSONResponse:
    """200 when the database and the broker answer within the dependency timeout.

    Both are checked concurrently, each under `dependency_timeout_seconds`, so a hung
    dependency costs one timeout, never a hung probe.
    """
    probes = await probe_all(ctx)
    down = [name for name, probe in probes.items() if not probe.ok]
    if down:
        body = problem_body(
            503, "Service Unavailable", f"Not ready: {', '.join(down)} unavailable.",
            dependency=down[0], dependencies=down,
        )  # fmt: skip
        return JSONResponse(
            body,
            status_code=503,
            media_type="application/problem+json",
            headers={"Retry-After": "1"},
        )
    return Ready()
