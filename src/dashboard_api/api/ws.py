"""`/ws`: the WebSocket handshake (a token in `?token=` or `Authorization: Bearer`); the
session itself is `realtime/ws.py` (API.md §10)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from dashboard_api.auth import Principal
from dashboard_api.context import AppContext
from dashboard_api.errors import ProblemError
from dashboard_api.services.authentication import authenticate

router = APIRouter(tags=["realtime"])

CLOSE_UNAUTHORIZED = 4401
CLOSE_TRY_AGAIN_LATER = 1013


def _token_of(websocket: WebSocket) -> str | None:
    token = websocket.query_params.get("token")
    if token:
        return token
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def _principal(ctx: AppContext, token: str | None) -> Principal | None:
    try:
        return await authenticate(ctx, token)
    except ProblemError:
        return None


@router.websocket("/ws", name="websocket")
async def websocket_endpoint(websocket: WebSocket) -> None:
    """Subscribe to live events; see API.md §10."""
    ctx: AppContext = websocket.app.state.ctx
    principal = await _principal(ctx, _token_of(websocket))
    await websocket.accept()
    if principal is None:
        await websocket.close(CLOSE_UNAUTHORIZED, "A valid token is required.")
        return
    live = ctx.realtime
    if live is None:  # the app's lifespan has not opened the realtime layer
        await websocket.close(CLOSE_TRY_AGAIN_LATER, "Live events are not available.")
        return
    await live.serve_websocket(websocket, principal)
