"""Python client: REST calls and a task's live output with automatic reconnect and resume."""

from dashboard_api.client.api import (
    ApiError,
    DashboardClient,
    StreamError,
    TaskEvent,
    ws_url,
)

__all__ = ["ApiError", "DashboardClient", "StreamError", "TaskEvent", "ws_url"]
