"""`/ws`: the WebSocket handshake (a token in `?token=`, `Authorization: Bearer` or the
subprotocols `bearer, <token>`); the session itself is `realtime/ws.py` (docs/api.md §10).

The app serves `/ws` through `WebSocketEntry`, a bare ASGI endpoint its outermost
dispatcher calls directly (`app.py`), not through Starlette's router: every frame of the
stack that leads to a handler stays alive as long as its socket, and the router's (route
matching, exit stacks, exception and middleware wrappers) took ~13 KB per socket. The
route below stays for `url_path_for` and any mount of the router without the dispatcher;
both run `serve_websocket`.
"""

from __future__ import annotations

from collections.abc import Awaitable

from fastapi import APIRouter, WebSocket
from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from dashboard_api.auth import Principal
from dashboard_api.context import AppContext
from dashboard_api.errors import ProblemError
from dashboard_api.services.authentication import authenticate

router = APIRouter(tags=["realtime"])

CLOSE_UNAUTHORIZED = 4401
CLOSE_TRY_AGAIN_LATER = 1013


# A browser cannot set headers on a WebSocket, and a token in the URL ends up in logs and
# history. It may offer the subprotocols `bearer, <token>` instead; the server then selects
# `bearer` (never echoing the token) and reads the token from the next entry.
BEARER_SUBPROTOCOL = "bearer"


def _subprotocol_token(headers: Headers) -> str | None:
    offered = [
        p.strip() for value in headers.getlist("sec-websocket-protocol") for p in value.split(",")
    ]
    for i, name in enumerate(offered[:-1]):
        if name == BEARER_SUBPROTOCOL and offered[i + 1]:
            return offered[i + 1]
    return None


def _token_of(scope: Scope) -> tuple[str | None, str | None]:
    """The token, and the subprotocol to select when it came as one.

    Read from the scope into objects dropped after the handshake (a `WebSocket`'s
    `headers` and `query_params` would be cached on it for the socket's lifetime)."""
    token = QueryParams(scope.get("query_string", b"")).get("token")
    if token:
        return token, None
    headers = Headers(scope=scope)
    header = headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), None
    token = _subprotocol_token(headers)
    if token:
        return token, BEARER_SUBPROTOCOL
    return None, None


async def _principal(ctx: AppContext, token: str | None) -> Principal | None:
    try:
        return await authenticate(ctx, token)
    except ProblemError:
        return None


async def serve_websocket(ctx: AppContext, websocket: WebSocket) -> None:
    """Authenticate the handshake, then serve the session; see docs/api.md §10."""
    token, subprotocol = _token_of(websocket.scope)
    principal = await _principal(ctx, token)
    await websocket.accept(subprotocol=subprotocol)
    if principal is None:
        await websocket.close(CLOSE_UNAUTHORIZED, "A valid token is required.")
        return
    live = ctx.realtime
    if live is None:  # the app's lifespan has not opened the realtime layer
        await websocket.close(CLOSE_TRY_AGAIN_LATER, "Live events are not available.")
        return
    await live.serve_websocket(websocket, principal)


class WebSocketEntry:
    """`/ws` as a bare ASGI endpoint (what the app's dispatcher calls for it)."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # The caller awaits the session itself: no frame of this call stays alive with it.
        return serve_websocket(self.ctx, WebSocket(scope, receive, send))


@router.websocket("/ws", name="websocket")
async def websocket_endpoint(websocket: WebSocket) -> None:
    """Subscribe to live events; see docs/api.md §10.

    The token comes from `?token=`, the `Authorization` header, or the subprotocols
    `bearer, <token>` (what a browser can send; the answer selects `bearer`).
    """
    await serve_websocket(websocket.app.state.ctx, websocket)
