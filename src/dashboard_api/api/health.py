"""Liveness and readiness (open, no token)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dashboard_api.api.deps import CtxDep
from dashboard_api.errors import problem_body

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
    """200 when the database and the broker answer within the dependency timeout."""
    timeout = ctx.settings.dependency_timeout_seconds
    down: list[str] = []
    try:
        await ctx.db.ping(timeout)
    except Exception:  # any failure to answer in time means "not ready"
        down.append("database")
    if ctx.broker is not None:
        try:
            await ctx.broker.ping(timeout)
        except Exception:
            down.append("broker")
    if down:
        body = problem_body(
            503, "Service Unavailable", f"Not ready: {', '.join(down)} unavailable.",
            dependency=down[0], dependencies=down,
        )  # fmt: skip
        return JSONResponse(body, status_code=503, media_type="application/problem+json")
    return Ready()
