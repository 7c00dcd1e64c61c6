"""Demo mode (`serve --demo`, `DASHBOARD_DEMO=true`): sample data and a live system.

On start, a database without tasks is seeded with every feature's sample data; then
simulated agents (one per agent type, `demo_agents` workers each) claim queued tasks and
stream their output, and a producer keeps new work coming: tasks, conversation messages
(answered by the agents through the conversation hook), webhook events and index jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from dashboard_api.aiotasks import raise_if_cancelled
from dashboard_api.context import AppContext
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.paging import PageRequest
from dashboard_api.demo.data import DEMO_USER, has_tasks, new_task_prompt, seed_demo
from dashboard_api.demo.inprocess import ServiceBackend
from dashboard_api.demo.simulator import SimulatedAgent
from dashboard_api.schemas.conversations import MessageCreate
from dashboard_api.schemas.sources import JobUpdate
from dashboard_api.schemas.tasks import TaskCreate
from dashboard_api.schemas.webhooks import WebhookEventCreate, WebhookSource
from dashboard_api.services import conversations as conversation_service
from dashboard_api.services import sources as source_service
from dashboard_api.services.seed_data import AGENT_TYPES, SOURCES
from dashboard_api.services.tasks import register_task
from dashboard_api.services.webhooks import record_event

log = logging.getLogger(__name__)

_SEED_LOCK_KEY = 0x64656D6F  # "demo": one process seeds when several start together
# Demo work holds short leases, and now and then its agent dies, so that lost work (failed
# by the lease reaper, retried when attempts are left) shows within a minute.
DEMO_LEASE_SECONDS = 30
DEMO_DEATH_RATE = 0.05


async def _claim_seeding(ctx: AppContext) -> bool:
    """True for the one process that should seed (the database has no task yet)."""
    async with ctx.db.write() as session:
        lock = dialect_of(session).advisory_xact_lock_sql(_SEED_LOCK_KEY)
        if lock is not None:
            await session.execute(lock)
        if await has_tasks(session):
            return False
        # A placeholder task, so that other processes see a non-empty database at once;
        # it becomes the first live demo task.

        agent_type, prompt = new_task_prompt(random.Random())
        await register_task(
            session,
            body=TaskCreate(agent_type=agent_type, input_message=prompt, source="dashboard"),
            now=ctx.clock.now(),
            prices=ctx.prices,
        )
        return True


async def run_demo(ctx: AppContext) -> None:
    """Seed (if empty), then run the simulated agents and the producer until cancelled."""
    try:
        if await _claim_seeding(ctx):
            await seed_demo(ctx)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("demo: seeding failed; running the simulation anyway")
    backend = ServiceBackend(ctx)
    settings = ctx.settings
    types = list(dict.fromkeys([*AGENT_TYPES, settings.default_agent_type]))
    agents = [
        SimulatedAgent(
            backend,
            name=agent_type,
            agent_types=[agent_type],
            workers=settings.demo_agents,
            pace=settings.demo_pace_seconds,
            heartbeat_every=max(1.0, min(10.0, settings.agent_online_seconds / 3)),
            lease_seconds=DEMO_LEASE_SECONDS,
            death_rate=DEMO_DEATH_RATE,
        )
        for agent_type in types
    ]
    async with asyncio.TaskGroup() as group:
        if settings.demo_agents > 0:
            for agent in agents:
                group.create_task(agent.run(), name=f"demo-agent-{agent.name}")
        group.create_task(_producer(ctx), name="demo-producer")


async def start_demo(ctx: AppContext) -> list[asyncio.Task[Any]]:
    """Start demo mode in the background; the tasks are cancelled at shutdown."""
    log.info("demo mode: seeding an empty database and starting simulated agents")
    return [asyncio.create_task(run_demo(ctx), name="demo")]


async def _producer(ctx: AppContext) -> None:
    """New work at a human pace, through the same services the API uses."""
    rng = random.Random()
    tick = 0
    while True:
        raise_if_cancelled()
        await asyncio.sleep(rng.uniform(3.0, 8.0))
        tick += 1
        try:
            await _new_task(ctx, rng)
            if tick % 6 == 0:
                await _new_conversation_message(ctx, rng)
            if tick % 3 == 0:
                await _new_webhook_event(ctx, rng)
            if tick % 10 == 0:
                await _index_step(ctx, rng)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the demo alive through transient errors
            log.warning("demo producer: %s", exc)


async def _new_task(ctx: AppContext, rng: random.Random) -> None:

    agent_type, prompt = new_task_prompt(rng)
    async with ctx.db.write() as session:
        await register_task(
            session,
            body=TaskCreate(
                agent_type=agent_type,
                input_message=prompt,
                source=rng.choice(SOURCES),
                user_id=f"user-{rng.randint(1, 40)}",
            ),
            now=ctx.clock.now(),
            prices=ctx.prices,
        )


async def _new_conversation_message(ctx: AppContext, rng: random.Random) -> None:

    async with ctx.db.read() as session:
        page = await conversation_service.list_conversations(
            session,
            principal=DEMO_USER,
            filters=conversation_service.ConversationFilters(),
            page=PageRequest(per_page=20),
        )
    if not page.items:
        return
    conversation = rng.choice(page.items)
    question = rng.choice(
        (
            "Can you also add a test for that?",
            "What changed since yesterday?",
            "Summarize the open pull requests.",
            "Is anything blocking the release?",
        )
    )
    async with ctx.db.write() as session:
        await conversation_service.post_message(
            session,
            conversation_id=conversation.conversation_id,
            principal=DEMO_USER,
            body=MessageCreate(content=question),
            now=ctx.clock.now(),
            prices=ctx.prices,
            default_agent_type=ctx.settings.default_agent_type,
        )


async def _new_webhook_event(ctx: AppContext, rng: random.Random) -> None:

    source: WebhookSource = rng.choice(("github", "github", "jira", "slack"))
    event_type = {"github": "pull_request.opened", "jira": "jira:issue_updated"}.get(
        source, "app_mention"
    )
    async with ctx.db.write() as session:
        await record_event(
            session,
            body=WebhookEventCreate(
                source=source,
                event_type=event_type,
                status="success" if rng.random() > 0.05 else "failed",
                payload={"demo": True},
            ),
            now=ctx.clock.now(),
        )


async def _index_step(ctx: AppContext, rng: random.Random) -> None:
    """Advance the demo indexer: claim a queued job and finish it, or queue a reindex."""

    now = ctx.clock.now()
    async with ctx.db.write() as session:
        claimed = await source_service.claim_job(
            session, agent="demo-indexer", now=now, lease_seconds=DEMO_LEASE_SECONDS
        )
        if claimed is not None:
            await source_service.update_job(
                session,
                job_id=claimed[0].job_id,
                body=JobUpdate(progress=0.5),
                now=now,
                lease_seconds=DEMO_LEASE_SECONDS,
            )
            job_id: str | None = claimed[0].job_id
        else:
            job_id = None
            sources = await source_service.list_sources(session)
            if sources:
                await source_service.request_reindex(
                    session, source_id=rng.choice(sources).source_id, now=now
                )
    if job_id is not None:
        if rng.random() < DEMO_DEATH_RATE:
            # The indexer "dies": the job stays running until its lease runs out, and
            # the lease reaper fails it (the dashboard shows lost work).
            log.info("demo: the indexer of job %s dies", job_id)
            return
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        with contextlib.suppress(Exception):
            async with ctx.db.write() as session:
                await source_service.update_job(
                    session,
                    job_id=job_id,
                    body=JobUpdate(status="succeeded", progress=1.0),
                    now=ctx.clock.now(),
                    lease_seconds=DEMO_LEASE_SECONDS,
                )
