"""Demo data: tasks over the last weeks, conversations, webhook events, OAuth installations
and data sources, all written through the features' own service functions (tasks in bulk
through `services.seed`)."""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.auth import Principal
from dashboard_api.context import AppContext
from dashboard_api.db.models import Task
from dashboard_api.demo.guards import seed_guards
from dashboard_api.schemas.conversations import ConversationCreate, MessageCreate
from dashboard_api.schemas.oauth import InstallationUpsert
from dashboard_api.schemas.sources import JobStatus, JobUpdate, SourceCreate
from dashboard_api.schemas.webhooks import WebhookEventCreate, WebhookSource
from dashboard_api.services import conversations as conversation_service
from dashboard_api.services import oauth as oauth_service
from dashboard_api.services import sources as source_service
from dashboard_api.services import webhooks as webhook_service
from dashboard_api.services.seed import seed_tasks
from dashboard_api.services.seed_data import AGENT_TYPES, PROMPTS, REPOS

log = logging.getLogger(__name__)

_DEMO_TOKEN_ID = "demo"  # noqa: S105 (an id, not a secret)
DEMO_USER = Principal(token_id=_DEMO_TOKEN_ID, user_id="admin", role="user")
DEMO_AGENT = Principal(token_id=_DEMO_TOKEN_ID, user_id="demo-agent", role="agent")

_CONVERSATIONS = (
    ("Why is the web build slow?", "claude-code", (
        "Why does the build of acme/web take 14 minutes?",
        "Can you cache the dependency step in CI?",
    )),
    ("Flaky payments tests", "test-fixer", (
        "tests/test_ledger.py fails about once in ten runs on main. Can you look?",
    )),
    ("Docs for the new CLI", "docs-writer", (
        "Write a reference page for the `acme deploy` flags.",
    )),
    ("Plan: move search to the new auth service", "planner", (
        "What would it take to move acme/search to the new auth service?",
    )),
)  # fmt: skip
_WEBHOOK_SOURCES: tuple[WebhookSource, ...] = ("github", "jira", "slack")
_WEBHOOK_TYPES = {
    "github": ("push", "pull_request.opened", "issues.opened", "issue_comment.created"),
    "jira": ("jira:issue_created", "jira:issue_updated", "comment_created"),
    "slack": ("app_mention", "message"),
}
_ATLASSIAN = "https://acme.atlassian.net"
_SOURCES: tuple[dict[str, Any], ...] = (
    {"type": "github_repo", "config": {"owner": "acme", "repo": "web", "branch": "main"}},
    {"type": "github_repo", "config": {"owner": "acme", "repo": "api"}},
    {"type": "jira_project", "config": {"site_url": _ATLASSIAN, "project_key": "ACME"}},
    {"type": "confluence_space", "config": {"site_url": _ATLASSIAN, "space_key": "ENG"}},
)  # fmt: skip
_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceCreate)


async def has_tasks(session: AsyncSession) -> bool:
    """Whether the database holds any task (demo data is seeded only into an empty one)."""
    return (await session.scalar(select(Task.task_id).limit(1))) is not None


async def seed_demo(ctx: AppContext, *, rng: random.Random | None = None) -> None:
    """Seed every feature's demo data into an empty database."""
    rng = rng or random.Random()
    settings = ctx.settings
    now = ctx.clock.now()
    async with ctx.db.write() as session:
        n = await seed_tasks(
            session, n=settings.demo_tasks, now=now, prices=ctx.prices, days=settings.demo_days
        )
    log.info("demo: seeded %d tasks over %d days", n, settings.demo_days)
    await _seed_conversations(ctx)
    await _seed_webhook_events(ctx, rng)
    await _seed_oauth(ctx)
    await _seed_sources(ctx)
    await seed_guards(ctx)  # after the tasks: the budget's limit is set from today's spend


async def _seed_conversations(ctx: AppContext) -> None:
    now = ctx.clock.now()
    for title, agent_type, questions in _CONVERSATIONS:
        async with ctx.db.write() as session:
            conversation = await conversation_service.create_conversation(
                session,
                principal=DEMO_USER,
                body=ConversationCreate(title=title, agent_type=agent_type),
                now=now,
            )
            conversation_id = conversation.conversation_id
        # The first questions were answered before; the last one is answered live by
        # the simulated agents (it queues a task of the conversation's agent type).
        for i, question in enumerate(questions):
            last = i == len(questions) - 1
            async with ctx.db.write() as session:
                await conversation_service.post_message(
                    session,
                    conversation_id=conversation_id,
                    principal=DEMO_USER,
                    body=MessageCreate(content=question, create_task=last),
                    now=ctx.clock.now(),
                    prices=ctx.prices,
                    default_agent_type=ctx.settings.default_agent_type,
                )
                if not last:
                    await conversation_service.post_message(
                        session,
                        conversation_id=conversation_id,
                        principal=DEMO_AGENT,
                        body=MessageCreate(
                            content="Looking at it: most of the time goes to installing "
                            "dependencies from scratch on every run.",
                            role="assistant",
                        ),
                        now=ctx.clock.now(),
                        prices=ctx.prices,
                        default_agent_type=ctx.settings.default_agent_type,
                    )


async def _seed_webhook_events(ctx: AppContext, rng: random.Random, count: int = 240) -> None:
    now = ctx.clock.now()
    async with ctx.db.write() as session:
        for i in range(count):
            source: WebhookSource = rng.choices(_WEBHOOK_SOURCES, (60, 25, 15))[0]
            failed = rng.random() < 0.06
            body = WebhookEventCreate(
                source=source,
                event_type=rng.choice(_WEBHOOK_TYPES[source]),
                status="failed" if failed else "success",
                error="Signature mismatch" if failed else None,
                delivery_id=f"demo-{i}",
                received_at=now - timedelta(seconds=7 * 86400 * rng.random() ** 1.5),
                payload={"repository": rng.choice(REPOS), "demo": True},
            )
            await webhook_service.record_event(session, body=body, now=now)


async def _seed_oauth(ctx: AppContext) -> None:
    now = ctx.clock.now()
    installs = (
        InstallationUpsert(
            platform="github", organization="acme", scopes=["repo", "read:org"],
            token_expires_at=now + timedelta(days=60), installed_at=now - timedelta(days=40),
        ),
        InstallationUpsert(
            platform="jira", organization="acme.atlassian.net",
            scopes=["read:jira-work", "write:jira-work"],
            token_expires_at=now + timedelta(days=3), installed_at=now - timedelta(days=20),
        ),
        InstallationUpsert(
            platform="slack", organization="acme-team", scopes=["app_mentions:read"],
            token_expires_at=None, installed_at=now - timedelta(days=90),
        ),
    )  # fmt: skip
    async with ctx.db.write() as session:
        for body in installs:
            await oauth_service.upsert_installation(session, body=body, now=now)


async def _seed_sources(ctx: AppContext) -> None:
    # None: left queued for the indexer
    outcomes: tuple[JobStatus | None, ...] = ("succeeded", "succeeded", "failed", None)
    for raw, outcome in zip(_SOURCES, outcomes, strict=True):
        now = ctx.clock.now()
        async with ctx.db.write() as session:
            source = await source_service.create_source(
                session, body=_SOURCE_ADAPTER.validate_python(raw), now=now
            )
            await source_service.request_reindex(session, source_id=source.source_id, now=now)
        if outcome is None:
            continue
        async with ctx.db.write() as session:
            claimed = await source_service.claim_job(
                session, agent="demo-indexer", now=now, lease_seconds=60
            )
            if claimed is None:
                continue
            await source_service.update_job(
                session,
                job_id=claimed[0].job_id,
                body=JobUpdate(
                    status=outcome,
                    progress=1.0 if outcome == "succeeded" else 0.4,
                    error="Rate limited by the provider" if outcome == "failed" else None,
                ),
                now=now,
                lease_seconds=60,
            )


def new_task_prompt(rng: random.Random) -> tuple[str, str]:
    """(agent_type, input) of a fresh demo task."""
    agent_type = rng.choice(AGENT_TYPES)
    prompt = rng.choice(PROMPTS).format(repo=rng.choice(REPOS), n=rng.randint(2, 9999))
    return agent_type, prompt
