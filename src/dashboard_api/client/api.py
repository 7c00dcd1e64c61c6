"""A Python client of the Dashboard API: REST calls (httpx) and a task's live output.

    async with DashboardClient("http://127.0.0.1:8000", token) as client:
        async for event in client.follow(task_id):
            if event.kind == "output":
                print(event.content, end="")

`follow` reconnects by itself (exponential backoff with jitter) and resumes after the last
seq it yielded, so a dropped connection loses and repeats nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from dashboard_api.task_statuses import TERMINAL_STATUSES


class ApiError(Exception):
    """An error answer of the API (a problem document)."""

    def __init__(self, status: int, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.problem = problem or {}


class StreamError(Exception):
    """The live stream was refused for good (bad token, no such task, forbidden)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One item of `follow`: an output chunk, a status change or a cancel request."""

    kind: Literal["output", "status", "cancel_requested"]
    task_id: str
    seq: int | None = None
    stream: str | None = None
    content: str | None = None
    status: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.kind == "status" and self.status in TERMINAL_STATUSES


def ws_url(base_url: str) -> str:
    """`http(s)://host/prefix` → `ws(s)://host/prefix/ws`."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class LeaseKeeper:
    """Renews one task's lease in the background (see `DashboardClient.keep_lease`)."""

    def __init__(self, client: DashboardClient, task_id: str, every: float) -> None:
        self.client = client
        self.task_id = task_id
        self.every = every
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self._beat(), name=f"lease-{self.task_id}")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            # wait(), not `await task`: the beat's CancelledError stays inside it, and a
            # cancellation of the caller still propagates.
            await asyncio.wait([self._task])
            self._task = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.client.heartbeat_task(self.task_id)
            except ApiError as exc:
                if exc.status in (404, 409):
                    self.lost.set()
                    return
            except httpx.HTTPError:
                pass  # the service may be briefly unreachable; beat again soon


class DashboardClient:
    """REST and live-stream access with one bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> DashboardClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self.http.aclose()

    # --- REST ---------------------------------------------------------------------------

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; the decoded JSON answer (None for 204), or `ApiError`."""
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            detail = problem.get("detail") if isinstance(problem, dict) else None
            raise ApiError(response.status_code, str(detail or response.text), problem)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def status(self) -> dict[str, Any]:
        """`GET /api/status`."""
        result: dict[str, Any] = await self.request("GET", "/api/status")
        return result

    async def list_tasks(self, **params: Any) -> dict[str, Any]:
        """`GET /api/tasks` with filters as keyword arguments."""
        result: dict[str, Any] = await self.request("GET", "/api/tasks", params=params)
        return result

    async def get_task(self, task_id: str) -> dict[str, Any]:
        """`GET /api/tasks/{task_id}`."""
        result: dict[str, Any] = await self.request("GET", f"/api/tasks/{quote(task_id)}")
        return result

    async def create_task(self, **body: Any) -> dict[str, Any]:
        """`POST /api/tasks` (agent role)."""
        result: dict[str, Any] = await self.request("POST", "/api/tasks", json=body)
        return result

    async def update_task(self, task_id: str, **body: Any) -> dict[str, Any]:
        """`PATCH /api/tasks/{task_id}` (agent role)."""
        result: dict[str, Any] = await self.request(
            "PATCH", f"/api/tasks/{quote(task_id)}", json=body
        )
        return result

    async def append_output(
        self, task_id: str, content: str, stream: str = "stdout"
    ) -> dict[str, Any]:
        """Append one chunk (agent role)."""
        result: dict[str, Any] = await self.request(
            "POST",
            f"/api/tasks/{quote(task_id)}/output",
            json={"content": content, "stream": stream},
        )
        return result

    async def append_chunks(self, task_id: str, chunks: list[dict[str, str]]) -> dict[str, Any]:
        """Append several chunks in one call (agent role)."""
        result: dict[str, Any] = await self.request(
            "POST", f"/api/tasks/{quote(task_id)}/output", json={"chunks": chunks}
        )
        return result

    async def claim_task(
        self, agent_type: str | list[str], agent: str, *, lease_seconds: int | None = None
    ) -> dict[str, Any] | None:
        """`POST /api/tasks/claim` (agent role): the oldest queued task, now running and
        leased to `agent`, or None when none is queued. Keep the lease alive while working
        (`keep_lease`, or any output/PATCH on the task)."""
        body: dict[str, Any] = {"agent_type": agent_type, "agent": agent}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        result: dict[str, Any] | None = await self.request("POST", "/api/tasks/claim", json=body)
        return result

    async def heartbeat_task(self, task_id: str) -> None:
        """`POST /api/tasks/{task_id}/heartbeat` (agent role): renew the task's lease.
        `ApiError` 409 means the task is no longer running (its lease may have expired)."""
        await self.request("POST", f"/api/tasks/{quote(task_id)}/heartbeat")

    def keep_lease(self, task_id: str, every: float) -> LeaseKeeper:
        """An async context manager that renews a running task's lease every `every`
        seconds (a third of the lease is a good value) while the caller works on it:

            async with client.keep_lease(task_id, every=100):
                ...  # long work with no output

        `keeper.lost` is set when the service answers 409 (the task ended, e.g. failed by
        lease expiry): stop working on it. Other errors are retried at the next beat."""
        return LeaseKeeper(self, task_id, every)

    async def retry_task(self, task_id: str) -> dict[str, Any]:
        """`POST /api/tasks/{task_id}/retry`: the retry of a failed or cancelled task
        (created once; asking again returns the same one)."""
        result: dict[str, Any] = await self.request("POST", f"/api/tasks/{quote(task_id)}/retry")
        return result

    async def cancel_task(self, task_id: str) -> dict[str, Any]:
        """`POST /api/tasks/{task_id}/cancel`."""
        result: dict[str, Any] = await self.request("POST", f"/api/tasks/{quote(task_id)}/cancel")
        return result

    async def full_log(self, task_id: str, after_seq: int | None = None) -> dict[str, Any]:
        """`GET /api/tasks/{task_id}/logs/full`."""
        params = {} if after_seq is None else {"after_seq": after_seq}
        result: dict[str, Any] = await self.request(
            "GET", f"/api/tasks/{quote(task_id)}/logs/full", params=params
        )
        return result

    # --- live ---------------------------------------------------------------------------

    async def follow(
        self,
        task_id: str,
        since_seq: int = 0,
        *,
        stop_at_end: bool = True,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        max_attempts: int | None = None,
    ) -> AsyncGenerator[TaskEvent, None]:
        """A task's output and status changes from `since_seq` on, reconnecting by itself.

        Stops after the terminal status when `stop_at_end`. Raises `StreamError` when the
        server refuses for good (bad token: close 4401; `not_found`; `forbidden`), and the
        last connection error once `max_attempts` consecutive attempts have failed.
        """
        channel = f"task:{task_id}"
        last_seq = since_seq
        failures = 0
        url = ws_url(self.base_url)
        headers = {"Authorization": f"Bearer {self.token}"}
        while True:
            try:
                async with websockets.connect(
                    url, additional_headers=headers, open_timeout=10, max_size=None
                ) as ws:
                    await ws.send(
                        orjson.dumps(
                            {"type": "subscribe", "channel": channel, "since_seq": last_seq}
                        ).decode()
                    )
                    async for raw in ws:
                        msg = orjson.loads(raw)
                        if msg.get("type") == "subscribed":
                            failures = 0
                            continue
                        event = _event_of(msg, task_id, channel)
                        if event is None or (event.seq is not None and event.seq <= last_seq):
                            continue
                        last_seq = event.seq if event.seq is not None else last_seq
                        yield event
                        if event.terminal and stop_at_end:
                            return
                    # The server closed the connection: reconnect below.
                    if ws.close_code == 4401:
                        raise StreamError("unauthorized", "the token was refused")
            except (
                ConnectionClosed,
                InvalidStatus,
                OSError,
                TimeoutError,
                InvalidHandshake,
            ) as exc:
                if _refused(exc):
                    raise StreamError("unauthorized", "the token was refused") from exc
                error: Exception = exc
            else:
                error = ConnectionError("connection closed")
            failures += 1
            if max_attempts is not None and failures >= max_attempts:
                raise error
            delay = min(max_backoff, initial_backoff * 2 ** (failures - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))


def _event_of(msg: dict[str, Any], task_id: str, channel: str) -> TaskEvent | None:
    """The `follow` item a server message stands for (None: nothing to yield); raises
    `StreamError` when the server refuses the channel."""
    kind = msg.get("type")
    if kind == "error" and msg.get("channel") == channel:
        raise StreamError(str(msg.get("code")), str(msg.get("message")))
    if kind == "task_output":
        return TaskEvent(
            "output",
            task_id,
            seq=int(msg["seq"]),
            stream=msg.get("stream"),
            content=msg.get("content"),
            data=msg,
        )
    if kind == "task_status":
        return TaskEvent("status", task_id, status=msg.get("status"), data=msg)
    if kind == "task_cancel_requested":
        return TaskEvent("cancel_requested", task_id, data=msg)
    return None


def _refused(exc: Exception) -> bool:
    """Whether a connection error means the token was refused (close 4401, HTTP 401/403)."""
    if isinstance(exc, ConnectionClosed):
        return exc.rcvd is not None and exc.rcvd.code == 4401
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code in (401, 403)
    return False
