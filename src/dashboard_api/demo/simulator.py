"""Simulated agents: claim queued tasks, stream output at a human pace, finish with tokens
and cost, honour cancel requests, heartbeat, and keep their tasks' leases alive (docs/api.md
§13). With `death_rate`, a worker now and then "dies" in the middle of a task: it stops
everything about it, lease renewals included, so the lease reaper fails the task. The
same code drives the in-process demo (`ServiceBackend`, service calls) and
`dashboard-api demo-agent` (`HttpBackend`, REST).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from dashboard_api.aiotasks import raise_if_cancelled

log = logging.getLogger(__name__)

MODELS = ("claude-sonnet-4", "claude-opus-4", "claude-haiku-4", "gpt-5", "gpt-5-mini")
MODEL_WEIGHTS = (50, 10, 20, 12, 8)


class AgentBackend(Protocol):
    """What a simulated agent needs from the service (tasks as their JSON documents)."""

    async def register(self, name: str, description: str, capabilities: list[str]) -> None: ...
    async def heartbeat(self, name: str, status: str) -> None: ...
    async def claim(
        self, agent_types: Sequence[str], agent: str, lease_seconds: int | None
    ) -> dict[str, Any] | None: ...
    async def renew(self, task_id: str) -> None: ...
    async def append(self, task_id: str, content: str, stream: str) -> None: ...
    async def update(self, task_id: str, fields: dict[str, Any]) -> dict[str, Any]: ...
    async def get(self, task_id: str) -> dict[str, Any]: ...


class BackendConflict(Exception):
    """The task moved on meanwhile (cancelled, or ended by someone else)."""


# --- what an agent "does" ----------------------------------------------------------------

_FILES = (
    "src/app/routes.py", "src/app/models.py", "src/app/auth.py", "tests/test_api.py",
    "web/src/components/TaskList.tsx", "infra/terraform/main.tf", "docs/cli.md",
    "src/payments/ledger.py", "src/search/index.py", "package.json", "pyproject.toml",
)  # fmt: skip
_STEPS: dict[str, tuple[str, ...]] = {
    "reviewer": (
        "Fetching the pull request diff ({n} files changed)",
        "Reading {file}",
        "Checking error handling in {file}",
        "Comment: consider a guard clause for the empty case in {file}:{line}",
        "Running the linters on the changed files",
        "Comment: this query runs once per item; batch it ({file}:{line})",
    ),
    "triage": (
        "Reading the issue and its {n} comments",
        "Searching for similar issues",
        "Found 2 likely duplicates",
        "Reproducing with the reported steps",
        "Labelling: bug, area/{area}, priority/p{p}",
    ),
    "docs-writer": (
        "Collecting the CLI flags from {file}",
        "Drafting the reference section",
        "Writing examples for {n} commands",
        "Checking links",
    ),
    "planner": (
        "Mapping the modules that touch {area}",
        "Listing the call sites ({n} found)",
        "Drafting the migration plan: 4 phases",
        "Estimating risk per phase",
    ),
}
_DEFAULT_STEPS = (
    "Cloning the repository",
    "Reading {file}",
    "$ pytest -q {file}",
    "FAILED tests/test_api.py::test_create - AssertionError: 422 != 201",
    "Editing {file}",
    "$ pytest -q",
    "{n} passed in {secs}s",
    "$ git commit -am 'Fix the validation of empty payloads'",
    "Opening a pull request",
)
_REPLIES = (
    "Here is what I found: {topic}. I checked the recent changes and the tests; the short "
    "answer is that it comes from a missing guard on empty input. I opened a fix.",
    "Done. {topic} — I made the change, ran the test suite (all green) and opened a pull "
    "request for review.",
    "Good question. {topic}: the build spends most of its time resolving dependencies; "
    "caching the lock file cuts it by about 60%.",
)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        file=rng.choice(_FILES),
        line=rng.randint(10, 400),
        n=rng.randint(2, 60),
        secs=f"{rng.uniform(0.4, 9.0):.2f}",
        area=rng.choice(("auth", "billing", "search", "api", "web")),
        p=rng.randint(1, 3),
    )


def script_for(task: dict[str, Any], rng: random.Random) -> list[tuple[str, str]]:
    """The (stream, line) output of one task."""
    steps = _STEPS.get(str(task.get("agent_type")), _DEFAULT_STEPS)
    lines: list[tuple[str, str]] = [("system", f"Starting {task.get('agent_type')} agent")]
    for template in steps:
        stream = "stderr" if template.startswith("FAILED") else "stdout"
        lines.append((stream, _fill(template, rng) + "\n"))
        if rng.random() < 0.3:
            lines.append(("stdout", f"  … {_fill('{file}', rng)} ({rng.randint(20, 900)} lines)\n"))
    return lines


def reply_for(task: dict[str, Any], rng: random.Random) -> str:
    """A conversation answer to the task's input."""
    topic = str(task.get("input_message") or task.get("input_preview") or "your request")
    topic = topic.strip().splitlines()[0][:120] if topic.strip() else "your request"
    return rng.choice(_REPLIES).format(topic=topic)


# --- the agent ---------------------------------------------------------------------------


@dataclass
class SimulatedAgent:
    """One agent name serving some agent types with a few workers."""

    backend: AgentBackend
    name: str
    agent_types: list[str]
    workers: int = 1
    pace: float = 0.4  # mean seconds between output lines
    idle_poll: float = 2.0
    heartbeat_every: float = 10.0
    failure_rate: float = 0.08
    lease_seconds: int | None = None  # None: the service's default
    death_rate: float = 0.0  # the share of tasks a worker abandons midway, as if it died
    seed: int | None = None
    busy: set[int] = field(default_factory=set)
    completed: int = 0
    died: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def run(self) -> None:
        """Register, then heartbeat and work until cancelled."""
        await self._retrying(
            lambda: self.backend.register(
                self.name,
                f"Simulated {', '.join(self.agent_types)} agent (demo)",
                ["demo", *self.agent_types],
            )
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self._heartbeats())
            for i in range(max(1, self.workers)):
                group.create_task(self._worker(i))

    async def _retrying(self, call: Any) -> Any:
        delay = 0.5
        while True:
            raise_if_cancelled()
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the service may be starting or briefly down
                log.warning("demo agent %s: %s; retrying", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _heartbeats(self) -> None:
        last: str | None = None
        while True:
            raise_if_cancelled()
            status = "busy" if self.busy else "idle"
            with contextlib.suppress(Exception):
                await self.backend.heartbeat(self.name, status)
                last = status
            # Beat again soon after a change of state, so busy/idle shows promptly.
            for _ in range(int(self.heartbeat_every / 0.5)):
                await asyncio.sleep(0.5)
                if ("busy" if self.busy else "idle") != last:
                    break

    async def _worker(self, index: int) -> None:
        agent_id = self.name if self.workers == 1 else f"{self.name}-{index + 1}"
        while True:
            raise_if_cancelled()  # a swallowed cancellation must still end the worker
            try:
                task = await self.backend.claim(self.agent_types, agent_id, self.lease_seconds)
                adopt = getattr(self.backend, "adopt", None)
                if task is None and adopt is not None:
                    # In-process demo only: pick up seeded running tasks nobody works on.
                    task = await adopt(self.agent_types, agent_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("demo agent %s: claim failed: %s", agent_id, exc)
                task = None
            if task is None:
                await asyncio.sleep(self.idle_poll * self.rng.uniform(0.6, 1.4))
                continue
            self.busy.add(index)
            try:
                await self.perform_leased(task)
            except asyncio.CancelledError:
                raise
            except BackendConflict:
                pass  # cancelled or ended elsewhere meanwhile
            except Exception as exc:
                log.warning("demo agent %s: task %s: %s", agent_id, task.get("task_id"), exc)
            finally:
                self.busy.discard(index)

    async def perform_leased(self, task: dict[str, Any]) -> str:
        """`perform`, renewing the task's lease meanwhile (every third of it): output and
        updates renew it too, but a real agent may think for minutes without either."""
        lease = float(self.lease_seconds or _lease_of(task) or 300)
        task_id = str(task["task_id"])

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                try:
                    await self.backend.renew(task_id)
                except asyncio.CancelledError:
                    raise
                except BackendConflict:
                    return  # ended elsewhere (or failed by its lease): perform finds out
                except Exception as exc:  # the service may be briefly down
                    log.warning("demo agent %s: lease renewal of %s: %s", self.name, task_id, exc)

        keeper = asyncio.create_task(renew(), name=f"lease-{task_id}")
        try:
            return await self.perform(task)
        finally:
            keeper.cancel()
            await asyncio.wait([keeper])

    async def perform(self, task: dict[str, Any]) -> str:
        """Work one claimed (running) task to its end; returns the final status ("died"
        when the worker abandoned it, leaving it running until its lease runs out)."""
        rng = self.rng
        task_id = str(task["task_id"])
        dies_at = rng.randint(1, 4) if rng.random() < self.death_rate else None
        model = task.get("model") or rng.choices(MODELS, MODEL_WEIGHTS)[0]
        in_tok = int(rng.lognormvariate(8.5, 0.8))
        out_tok = 0
        cache_read = int(in_tok * rng.uniform(0.5, 3))
        lines = script_for(task, rng)
        for i, (stream, content) in enumerate(lines):
            if i == dies_at:
                log.info("demo agent %s dies while working on %s", self.name, task_id)
                self.died += 1
                return "died"
            await self.backend.append(task_id, content, stream)
            out_tok += len(content) // 3 + rng.randint(5, 60)
            if i % 3 == 2:
                current = await self.backend.get(task_id)
                if current.get("cancel_requested"):
                    await self.backend.append(task_id, "Cancel requested: stopping.\n", "system")
                    await self.backend.update(
                        task_id,
                        {"status": "cancelled", "model": model, "input_tokens": in_tok,
                         "output_tokens": out_tok, "cache_read_tokens": cache_read},
                    )  # fmt: skip
                    return "cancelled"
                if current.get("status") != "running":
                    raise BackendConflict(task_id)
                # Live metrics: the cost grows while the task runs.
                await self.backend.update(
                    task_id,
                    {"model": model, "input_tokens": in_tok, "output_tokens": out_tok,
                     "cache_read_tokens": cache_read},
                )  # fmt: skip
            await asyncio.sleep(self.pace * rng.uniform(0.3, 1.8))
        failed = rng.random() < self.failure_rate and not task.get("conversation_id")
        final: dict[str, Any] = {
            "model": model,
            "input_tokens": in_tok + rng.randint(100, 4000),
            "output_tokens": out_tok + rng.randint(50, 800),
            "cache_read_tokens": cache_read,
            "cache_write_tokens": int(in_tok * rng.uniform(0, 0.2)),
        }
        if failed:
            final |= {"status": "failed", "error": "Agent exceeded its tool-call budget."}
        elif task.get("conversation_id"):
            final |= {"status": "completed", "result": reply_for(task, rng)}
        else:
            final |= {"status": "completed", "result": "Done: opened a pull request with the fix."}
        await self.backend.update(task_id, final)
        self.completed += 1
        return str(final["status"])


def _lease_of(task: dict[str, Any]) -> float | None:
    """The lease length a claimed task was given (from its `lease_expires_at`), if any."""
    from datetime import datetime

    expires, started = task.get("lease_expires_at"), task.get("started_at")
    if not expires or not started:
        return None
    span = datetime.fromisoformat(str(expires).replace("Z", "+00:00")) - datetime.fromisoformat(
        str(started).replace("Z", "+00:00")
    )
    return max(span.total_seconds(), 1.0)


# --- backends ----------------------------------------------------------------------------


class HttpBackend:
    """The REST API of a running service (what a real agent engine would use)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def register(self, name: str, description: str, capabilities: list[str]) -> None:
        r = await self.client.put(
            f"/api/agents/{name}", json={"description": description, "capabilities": capabilities}
        )
        r.raise_for_status()

    async def heartbeat(self, name: str, status: str) -> None:
        r = await self.client.post(f"/api/agents/{name}/heartbeat", json={"status": status})
        r.raise_for_status()

    async def claim(
        self, agent_types: Sequence[str], agent: str, lease_seconds: int | None
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {"agent_type": list(agent_types), "agent": agent}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        r = await self.client.post("/api/tasks/claim", json=body)
        if r.status_code == 204:
            return None
        r.raise_for_status()
        task: dict[str, Any] = r.json()
        return task

    async def renew(self, task_id: str) -> None:
        r = await self.client.post(f"/api/tasks/{task_id}/heartbeat")
        if r.status_code in (404, 409):
            raise BackendConflict(task_id)
        r.raise_for_status()

    async def append(self, task_id: str, content: str, stream: str) -> None:
        r = await self.client.post(
            f"/api/tasks/{task_id}/output", json={"content": content, "stream": stream}
        )
        if r.status_code == 409:
            raise BackendConflict(task_id)
        r.raise_for_status()

    async def update(self, task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.patch(f"/api/tasks/{task_id}", json=fields)
        if r.status_code == 409:
            raise BackendConflict(task_id)
        r.raise_for_status()
        task: dict[str, Any] = r.json()
        return task

    async def get(self, task_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/tasks/{task_id}")
        r.raise_for_status()
        task: dict[str, Any] = r.json()
        return task
