"""Real-time delivery: broker (Redis | memory), per-replica hub, `/ws` sessions and SSE streams."""

from dashboard_api.realtime.runtime import Realtime, realtime_lifespan, uvicorn_ws_options

__all__ = ["Realtime", "realtime_lifespan", "uvicorn_ws_options"]
