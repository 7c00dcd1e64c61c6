"""The simulated agents' view of the service when they run inside it: service calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from dashboard_api.context import AppContext
from dashboard_api.db.models import Task
from dashboard_api.demo.simulator import BackendConflict
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.schemas.agents import AgentRegister
from dashboard_api.schemas.tasks import OutputChunkIn, TaskUpdate, task_public
from dashboard_api.services import agents as agent_service
from dashboard_api.services import tasks as task_service


class ServiceBackend:
    """`AgentBackend` over the service layer of this app (same rules as the REST API)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    @property
    def _window(self) -> float:
        return self.ctx.settings.agent_online_seconds

    async def register(self, name: str, description: str, capabilities: list[str]) -> None:
        body = AgentRegister(description=description, capabilities=capabilities)
        async with self.ctx.db.write() as session:
            await agent_service.register_agent(
                session, name=name, body=body, now=self.ctx.clock.now(), window=self._window
            )

    async def heartbeat(self, name: str, status: str) -> None:
        async with self.ctx.db.write() as session:
            await agent_service.heartbeat(
                session, name=name, status=status, now=self.ctx.clock.now(), window=self._window
            )

    async def claim(
        self, agent_types: Sequence[str], agent: str, lease_seconds: int | None
    ) -> dict[str, Any] | None:
        async with self.ctx.db.write() as session:
            task = await task_service.claim_task(
                session,
                agent_types=agent_types,
                agent=agent,
                now=self.ctx.clock.now(),
                lease_seconds=lease_seconds,
            )
            return None if task is None else task_public(task).model_dump(mode="json")

    async def renew(self, task_id: str) -> None:
        try:
            async with self.ctx.db.write() as session:
                await task_service.heartbeat_task(
                    session, task_id=task_id, now=self.ctx.clock.now()
                )
        except (Conflict, NotFound) as exc:
            raise BackendConflict(task_id) from exc

    async def adopt(self, agent_types: Sequence[str], agent: str) -> dict[str, Any] | None:
        """A running task of these types whose agent is gone (seeded data), taken over."""
        async with self.ctx.db.write() as session:
            stmt = (
                select(Task.task_id)
                .where(
                    Task.status == "running",
                    Task.agent_type.in_(list(agent_types)),
                    Task.output_seq == 0,
                )
                .order_by(Task.created_at, Task.task_id)
                .limit(1)
            )
            task_id = await session.scalar(stmt)
            if task_id is None:
                return None
            task = await task_service.update_task(
                session,
                task_id=task_id,
                body=TaskUpdate(assigned_agent=agent),
                now=self.ctx.clock.now(),
                prices=self.ctx.prices,
            )
            return task_public(task).model_dump(mode="json")

    async def append(self, task_id: str, content: str, stream: str) -> None:
        settings = self.ctx.settings
        try:
            async with self.ctx.db.write() as session:
                await task_service.append_output(
                    session,
                    task_id=task_id,
                    chunks=[OutputChunkIn.model_validate({"content": content, "stream": stream})],
                    now=self.ctx.clock.now(),
                    cap_bytes=settings.output_cap_bytes,
                    max_chunk_bytes=settings.max_chunk_bytes,
                )
        except Conflict as exc:
            raise BackendConflict(task_id) from exc

    async def update(self, task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.ctx.db.write() as session:
                task = await task_service.update_task(
                    session,
                    task_id=task_id,
                    body=TaskUpdate.model_validate(fields),
                    now=self.ctx.clock.now(),
                    prices=self.ctx.prices,
                )
                return task_public(task).model_dump(mode="json")
        except Conflict as exc:
            raise BackendConflict(task_id) from exc

    async def get(self, task_id: str) -> dict[str, Any]:
        async with self.ctx.db.read() as session:
            task = await task_service.get_task(session, task_id)
            return task_public(task).model_dump(mode="json")
