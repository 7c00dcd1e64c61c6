"""`/api/agents`: the agent registry (agents write, users read)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from dashboard_api.api.deps import AgentRole, CtxDep, UserRole
from dashboard_api.errors import NotFound
from dashboard_api.schemas.agents import (
    AGENT_NAME_PATTERN,
    AgentHeartbeat,
    AgentList,
    AgentPublic,
    AgentRegister,
)
from dashboard_api.schemas.common import problem_responses
from dashboard_api.services import agents as service

router = APIRouter(
    prefix="/api/agents", tags=["agents"], responses=problem_responses(401, 403, 422)
)
AgentNamePath = Annotated[
    str, Path(pattern=AGENT_NAME_PATTERN, description="1-255 of `[A-Za-z0-9._:@-]`")
]


@router.get("", response_model=AgentList)
async def list_agents(ctx: CtxDep, _: UserRole) -> AgentList:
    """Every registered agent and every agent type seen in tasks, with live status."""
    async with ctx.db.read() as session:
        items = await service.list_agents(
            session, now=ctx.clock.now(), window=ctx.settings.agent_online_seconds
        )
    return AgentList(items=items)


@router.get("/{name}", response_model=AgentPublic, responses=problem_responses(404))
async def get_agent(ctx: CtxDep, _: UserRole, name: AgentNamePath) -> AgentPublic:
    """One agent (registered, or an agent type seen in tasks)."""
    async with ctx.db.read() as session:
        agent = await service.get_agent(
            session, name=name, now=ctx.clock.now(), window=ctx.settings.agent_online_seconds
        )
    if agent is None:
        raise NotFound(f"No agent {name!r}.")
    return agent


@router.put(
    "/{name}",
    response_model=AgentPublic,
    responses={201: {"model": AgentPublic, "description": "Registered (new name)"}},
)
async def register_agent(
    ctx: CtxDep, _: AgentRole, name: AgentNamePath, body: AgentRegister, response: Response
) -> AgentPublic:
    """Register an agent (201) or update its description and capabilities (200)."""
    async with ctx.db.write() as session:
        agent, created = await service.register_agent(
            session,
            name=name,
            body=body,
            now=ctx.clock.now(),
            window=ctx.settings.agent_online_seconds,
        )
    response.status_code = 201 if created else 200
    return agent


@router.post("/{name}/heartbeat", status_code=204, response_class=Response)
async def heartbeat(
    ctx: CtxDep, _: AgentRole, name: AgentNamePath, body: AgentHeartbeat | None = None
) -> Response:
    """Record a sign of life (an unknown name is registered); `status` idle or busy."""
    status = body.status if body is not None else "idle"
    async with ctx.db.write() as session:
        await service.heartbeat(
            session,
            name=name,
            status=status,
            now=ctx.clock.now(),
            window=ctx.settings.agent_online_seconds,
        )
    return Response(status_code=204)
