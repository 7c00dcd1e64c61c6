"""`/ws`: the WebSocket handshake (a token in `?token=`, `Authorization: Bearer` or the
subprotocols `bearer, <token>`); the session itself is `realtime/ws.py` (docs/api.md §10)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

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


def _subprotocol_token(websocket: WebSocket) -> str | None:
    offered = [
        p.strip()
        for value in websocket.headers.getlist("sec-websocket-protocol")
        for p in value.split(",")
    ]
    for i, name in enumerate(offered[:-1]):
        if name == BEARER_SUBPROTOCOL and offered[i + 1]:
            return offered[i + 1]
    return None


def _token_of(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The token, and the subprotocol to select when it came as one."""
    token = websocket.query_params.get("token")
    if token:
        return token, None
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), None
    token = _subprotocol_token(websocket)
    if token:
        return token, BEARER_SUBPROTOCOL
    return None, None


async def _principal(ctx: AppContext, token: str | None) -> Principal | None:
    try:
        return await authenticate(ctx, token)
    except ProblemError:
        return None


@router.websocket("/ws", name="websocket")
async def websocket_endpoint(websocket: WebSocket) -> None:
    """Subscribe to live events; see docs/api.md §10.

    The token comes from `?token=`, the `Authorization` header, or the subprotocols
    `bearer, <token>` (what a browser can send; the answer selects `bearer`).
    """
    ctx: AppContext = websocket.app.state.ctx
    token, subprotocol = _token_of(websocket)
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
