"""Agents: registration, heartbeats, live status and per-agent task figures.

An agent's figures are those of the tasks whose `agent_type` equals its name. They come
from indexed queries, never from a scan of every task: running and queued counts walk
the status / queue indexes (only the rows in those states), the 24-hour figures walk
`ix_tasks_created` (or `ix_tasks_agent_type_created` for one agent) over the last day,
and the agent types seen in tasks come from a loose index scan of
`ix_tasks_agent_type_created` (one index probe per distinct type).

Status is computed at read time from `last_heartbeat_at` and the window, so a read is
always right. Transitions are also published on the `agents` channel: heartbeats and
registrations publish in their transaction; going offline by timeout (which has no write
of its own) is published by `sweep_offline`, which the app runs periodically. The
`announced_status` column makes each transition publish once across every replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import emit
from dashboard_api.db.models import Agent, Task
from dashboard_api.schemas.agents import AgentPublic, AgentRegister
from dashboard_api.services.tasks.leases import renew_agent_leases

AGENTS_CHANNEL = "agents"

# One index probe per distinct agent type (a "loose index scan"); the same SQL runs on
# PostgreSQL and SQLite.
_DISTINCT_AGENT_TYPES = text(
    """
    WITH RECURSIVE t(agent_type) AS (
        SELECT MIN(agent_type) FROM tasks
        UNION ALL
        SELECT (SELECT MIN(agent_type) FROM tasks WHERE agent_type > t.agent_type)
        FROM t WHERE t.agent_type IS NOT NULL
    )
    SELECT agent_type FROM t WHERE agent_type IS NOT NULL
    """
)


@dataclass(slots=True)
class Figures:
    """Task figures of one agent type."""

    running: int = 0
    queued: int = 0
    total_24h: int = 0
    completed_24h: int = 0
    failed_24h: int = 0

    @property
    def success_rate_24h(self) -> float | None:
        ended = self.completed_24h + self.failed_24h
        return None if ended == 0 else self.completed_24h / ended


@dataclass(slots=True)
class _Unregistered:
    """An agent type seen only in tasks."""

    name: str
    description: str | None = None
    capabilities: list[Any] = field(default_factory=list)
    reported_status: str = "idle"
    last_heartbeat_at: datetime | None = None


def live_status(
    last_heartbeat_at: datetime | None, reported_status: str, *, now: datetime, window: float
) -> str:
    """online / busy within `window` seconds of the last heartbeat (inclusive), else offline."""
    if last_heartbeat_at is None or (now - last_heartbeat_at).total_seconds() > window:
        return "offline"
    return "busy" if reported_status == "busy" else "online"


def _public(
    agent: Agent | _Unregistered, figures: Figures, *, now: datetime, window: float
) -> AgentPublic:
    return AgentPublic(
        name=agent.name,
        description=agent.description,
        capabilities=[str(c) for c in agent.capabilities or []],
        status=live_status(agent.last_heartbeat_at, agent.reported_status, now=now, window=window),
        registered=isinstance(agent, Agent),
        last_heartbeat_at=agent.last_heartbeat_at,
        running_tasks=figures.running,
        queued_tasks=figures.queued,
        tasks_24h=figures.total_24h,
        success_rate_24h=figures.success_rate_24h,
    )


async def agent_types_in_tasks(session: AsyncSession) -> list[str]:
    """Every distinct `agent_type` of the tasks table, in order."""
    return [row[0] for row in await session.execute(_DISTINCT_AGENT_TYPES)]


async def task_figures(
    session: AsyncSession, *, now: datetime, names: Sequence[str] | None = None
) -> dict[str, Figures]:
    """Figures per agent type (all types, or only `names`)."""
    out: dict[str, Figures] = {}

    def fig(name: str) -> Figures:
        found = out.get(name)
        if found is None:
            found = out[name] = Figures()
        return found

    def scoped(stmt: Any) -> Any:
        if names is None:
            return stmt
        return stmt.where(Task.agent_type.in_(list(names)))

    for status in ("running", "queued"):
        stmt = scoped(
            select(Task.agent_type, func.count())
            .where(Task.status == status)
            .group_by(Task.agent_type)
        )
        for agent_type, count in await session.execute(stmt):
            if status == "running":
                fig(agent_type).running = count
            else:
                fig(agent_type).queued = count
    since = now - timedelta(hours=24)
    stmt = scoped(
        select(Task.agent_type, Task.status, func.count())
        .where(Task.created_at >= since)
        .group_by(Task.agent_type, Task.status)
    )
    for agent_type, status, count in await session.execute(stmt):
        f = fig(agent_type)
        f.total_24h += count
        if status == "completed":
            f.completed_24h += count
        elif status == "failed":
            f.failed_24h += count
    return out


async def list_agents(session: AsyncSession, *, now: datetime, window: float) -> list[AgentPublic]:
    """Every registered agent and every agent type seen in tasks, by name."""
    registered = {a.name: a for a in (await session.scalars(select(Agent))).all()}
    types = await agent_types_in_tasks(session)
    figures = await task_figures(session, now=now)
    agents: dict[str, Agent | _Unregistered] = dict(registered)
    for agent_type in types:
        agents.setdefault(agent_type, _Unregistered(agent_type))
    return [
        _public(agents[name], figures.get(name, Figures()), now=now, window=window)
        for name in sorted(agents)
    ]


async def get_agent(
    session: AsyncSession, *, name: str, now: datetime, window: float
) -> AgentPublic | None:
    """One agent (registered or only seen in tasks), or None."""
    agent: Agent | _Unregistered | None = await session.get(Agent, name)
    figures = (await task_figures(session, now=now, names=[name])).get(name)
    if agent is None:
        if figures is None:
            exists = await session.scalar(select(Task.task_id).where(Task.agent_type == name))
            if exists is None:
                return None
        agent = _Unregistered(name)
    return _public(agent, figures or Figures(), now=now, window=window)


async def count_agents(session: AsyncSession, *, now: datetime, window: float) -> tuple[int, int]:
    """(online or busy, total listed)."""
    cutoff = now - timedelta(seconds=window)
    online = await session.scalar(
        select(func.count()).select_from(Agent).where(Agent.last_heartbeat_at >= cutoff)
    )
    names = set((await session.scalars(select(Agent.name))).all())
    names.update(await agent_types_in_tasks(session))
    return int(online or 0), len(names)


async def _locked_or_created(
    session: AsyncSession, *, name: str, now: datetime
) -> tuple[Agent, bool]:
    """The agent row locked for the transaction, created first when missing."""
    insert = (
        dialect_of(session)
        .insert(Agent.__table__)  # type: ignore[arg-type]
        .values(
            name=name,
            description=None,
            capabilities=[],
            reported_status="idle",
            announced_status="offline",
            registered_at=now,
            updated_at=now,
            last_heartbeat_at=None,
        )
        .on_conflict_do_nothing(index_elements=["name"])
    )
    created = (await session.execute(insert)).rowcount == 1  # type: ignore[attr-defined]
    stmt = dialect_of(session).lock_for_update(select(Agent).where(Agent.name == name))
    agent = (await session.scalars(stmt.execution_options(populate_existing=True))).one()
    return agent, created


async def _announce(
    session: AsyncSession, agents: Iterable[Agent], *, now: datetime, window: float
) -> None:
    """Queue an `agent_status` event per agent (published after commit)."""
    agents = list(agents)
    if not agents:
        return
    await session.flush()
    figures = await task_figures(session, now=now, names=[a.name for a in agents])
    for agent in agents:
        public = _public(agent, figures.get(agent.name, Figures()), now=now, window=window)
        emit(
            session,
            AGENTS_CHANNEL,
            {"type": "agent_status", "agent": public.model_dump(mode="json")},
        )


async def register_agent(
    session: AsyncSession, *, name: str, body: AgentRegister, now: datetime, window: float
) -> tuple[AgentPublic, bool]:
    """Create or update an agent's description and capabilities; (agent, created)."""
    agent, created = await _locked_or_created(session, name=name, now=now)
    changed = created
    fields = body.model_fields_set
    if "description" in fields and body.description != agent.description:
        agent.description = body.description
        changed = True
    if "capabilities" in fields:
        capabilities = list(dict.fromkeys(body.capabilities or []))
        if capabilities != list(agent.capabilities or []):
            agent.capabilities = capabilities
            changed = True
    if changed:
        agent.updated_at = now
        agent.announced_status = live_status(
            agent.last_heartbeat_at, agent.reported_status, now=now, window=window
        )
        await _announce(session, [agent], now=now, window=window)
    public = await get_agent(session, name=name, now=now, window=window)
    assert public is not None
    return public, created


async def heartbeat(
    session: AsyncSession, *, name: str, status: str, now: datetime, window: float
) -> None:
    """Record a sign of life (registering unknown names); announce a changed status. The
    leases of the running tasks assigned to this agent are renewed (docs/api.md §13)."""
    await renew_agent_leases(session, agent=name, now=now)
    agent, _ = await _locked_or_created(session, name=name, now=now)
    agent.last_heartbeat_at = now
    agent.reported_status = status
    current = live_status(now, status, now=now, window=window)
    if current != agent.announced_status:
        agent.announced_status = current
        agent.updated_at = now
        await _announce(session, [agent], now=now, window=window)


async def stale_agents(session: AsyncSession, *, now: datetime, window: float) -> list[str]:
    """Names of agents announced online/busy whose heartbeat has expired (a cheap read)."""
    cutoff = now - timedelta(seconds=window)
    stmt = select(Agent.name).where(
        Agent.announced_status != "offline",
        or_(Agent.last_heartbeat_at.is_(None), Agent.last_heartbeat_at < cutoff),
    )
    return list((await session.scalars(stmt)).all())


async def sweep_offline(session: AsyncSession, *, now: datetime, window: float) -> list[str]:
    """Mark expired agents offline and announce each once; returns their names.

    The conditional UPDATE decides which replica announces: only the transaction that
    flips `announced_status` publishes.
    """
    cutoff = now - timedelta(seconds=window)
    stmt = (
        update(Agent)
        .where(
            Agent.announced_status != "offline",
            or_(Agent.last_heartbeat_at.is_(None), Agent.last_heartbeat_at < cutoff),
        )
        .values(announced_status="offline", updated_at=now)
        .returning(Agent.name)
    )
    names = list((await session.scalars(stmt)).all())
    if names:
        agents = (
            await session.scalars(
                select(Agent).where(Agent.name.in_(names)).execution_options(populate_existing=True)
            )
        ).all()
        await _announce(session, agents, now=now, window=window)
    return names
