"""Agents (docs/api.md §4) and the system status (docs/api.md §2)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from dashboard_api.schemas.common import ApiModel
from dashboard_api.timeutil import UtcDateTime

# Agent names are slug-like: they are usually an `agent_type`, or an engine's host name.
AGENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}$"
AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME_PATTERN)]
Capability = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class AgentRegister(ApiModel):
    """`PUT /api/agents/{name}`: fields left out keep their stored value."""

    description: str | None = Field(default=None, max_length=2000)
    capabilities: list[Capability] | None = Field(default=None, max_length=100)


class AgentHeartbeat(ApiModel):
    """`POST /api/agents/{name}/heartbeat`."""

    status: Literal["idle", "busy"] = "idle"


class AgentPublic(BaseModel):
    """An agent with its live status and its task figures (by `agent_type` = name)."""

    name: str
    description: str | None
    capabilities: list[str]
    status: Literal["online", "busy", "offline"]
    registered: bool = Field(description="False for an agent type only seen in tasks.")
    last_heartbeat_at: UtcDateTime | None
    running_tasks: int
    queued_tasks: int
    tasks_24h: int
    success_rate_24h: float | None = Field(
        description="completed / (completed + failed) over tasks created in the last 24 h; "
        "null when none has ended."
    )


class AgentList(BaseModel):
    items: list[AgentPublic]


class DatabaseComponent(BaseModel):
    ok: bool
    backend: Literal["postgresql", "sqlite"]
    latency_ms: float | None
    error: str | None = None


class BrokerComponent(BaseModel):
    ok: bool
    backend: Literal["redis", "memory"]
    latency_ms: float | None
    error: str | None = None


class Components(BaseModel):
    database: DatabaseComponent
    broker: BrokerComponent


class RealtimeStatus(BaseModel):
    connections: int
    subscriptions: int


class TaskCounts(BaseModel):
    """Null while the database is down."""

    queued: int | None
    running: int | None


class AgentCounts(BaseModel):
    """Null while the database is down."""

    online: int | None
    total: int | None


class SystemStatus(BaseModel):
    """`GET /api/status`: `degraded` when a component is down (figures it needs are null)."""

    status: Literal["ok", "degraded"]
    version: str
    started_at: UtcDateTime
    uptime_seconds: float
    components: Components
    realtime: RealtimeStatus
    tasks: TaskCounts
    agents: AgentCounts
