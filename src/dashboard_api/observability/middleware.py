"""Request ids, access logs and request metrics, as one pure ASGI middleware."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard_api.ids import new_id
from dashboard_api.observability.logging import redact_text
from dashboard_api.observability.metrics import UNMATCHED_ROUTE, Metrics

REQUEST_ID_HEADER = "X-Request-ID"
SLOW_CONSUMER_CLOSE = 1013  # "try again later": the send queue overflowed
# An incoming id is honoured only when it is short and plain, so that it is safe to log
# and to echo in a header.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

access_log = structlog.get_logger("dashboard_api.access")
# The standard logger behind it, whose level (the root's, `observability.logging`) says
# whether an access line would be written at all.
_ACCESS = logging.getLogger("dashboard_api.access")


def incoming_request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID when it is sane, else None."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                return None
            return text if _SANE_REQUEST_ID.match(text) else None
    return None


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/tasks/{task_id}`), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class ObservabilityMiddleware:
    """Gives each request an id (echoed in `X-Request-ID`), logs it, and measures it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or new_id()
        scope.setdefault("state", {})["request_id"] = request_id
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        start = time.perf_counter()
        call = _Call(request_id, receive, send)
        try:
            await self.app(scope, call.receive if kind == "websocket" else receive, call.send)
        except BaseException:
            call.status = 500 if call.status is None else call.status
            raise
        finally:
            seconds = time.perf_counter() - start
            self._finish(scope, call.status, call.ws_close, seconds)
            structlog.contextvars.reset_contextvars(**bound)

    def _finish(
        self, scope: Scope, status: int | None, ws_close: int | None, seconds: float
    ) -> None:
        route = route_template(scope)
        method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
        final = status if status is not None else 500
        if scope["type"] == "http":
            self.metrics.observe_request(method, route, final, seconds)
        if not _ACCESS.isEnabledFor(logging.INFO):
            # Below the configured level the line would be dropped after structlog's
            # processors ran (and the path was redacted): the hot reads skip it all.
            if scope["type"] != "http":
                self._count_ws(final, ws_close)
            return
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "path": _safe_path(scope),
            "status": final,
            "duration_ms": round(seconds * 1000, 3),
        }
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        if scope["type"] == "http":
            access_log.info("request", **fields)
        else:
            self._count_ws(final, ws_close)
            access_log.info("websocket", close_code=ws_close, **fields)

    def _count_ws(self, final: int, ws_close: int | None) -> None:
        outcome = "refused" if final != 101 else f"closed_{ws_close or 1000}"
        self.metrics.ws_sessions.labels(outcome).inc()
        if ws_close == SLOW_CONSUMER_CLOSE:
            self.metrics.slow_consumer_disconnects += 1


class _Call:
    """One request's or socket's `send` and `receive` as the app sees them: the status and
    close code noted on the way.

    An object with slots rather than closures: a WebSocket's call lasts as long as the
    socket, and two closures over five cells were nine objects per socket for every full
    garbage collection to walk; this is one, plus the two bound methods the app holds.
    """

    __slots__ = ("_receive", "_send", "request_id", "status", "ws_close")

    def __init__(self, request_id: str, receive: Receive, send: Send) -> None:
        self.request_id = request_id
        self._receive = receive
        self._send = send
        self.status: int | None = None
        self.ws_close: int | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            MutableHeaders(scope=message).append(REQUEST_ID_HEADER, self.request_id)
        elif kind == "websocket.accept":
            self.status = 101
            headers = list(message.get("headers") or [])
            headers.append((b"x-request-id", self.request_id.encode()))
            message = {**message, "headers": headers}
        elif kind == "websocket.close":
            self.ws_close = int(message.get("code", 1000))
            if self.status is None:
                self.status = 403  # refused during the handshake
        elif kind == "websocket.http.response.start":
            self.status = int(message["status"])
        await self._send(message)

    async def receive(self) -> Message:
        message = await self._receive()
        # A server-side close can also reach the app as a disconnect it injected itself
        # (the realtime layer's fast path for slow consumers).
        if message["type"] == "websocket.disconnect" and self.ws_close is None:
            code = int(message.get("code", 1000))
            if code == SLOW_CONSUMER_CLOSE:
                self.ws_close = code
        return message


def _safe_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    query = scope.get("query_string", b"")
    if query:
        path += "?" + query.decode("latin-1")
    return redact_text(path)
