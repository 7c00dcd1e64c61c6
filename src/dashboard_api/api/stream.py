"""Live routes: the `/ws` WebSocket and the task output SSE stream (the delivery itself is
`realtime/`)."""

from fastapi import APIRouter

from dashboard_api.api.sse import router as sse_router
from dashboard_api.api.ws import router as ws_router

router = APIRouter()
router.include_router(ws_router)
router.include_router(sse_router)
