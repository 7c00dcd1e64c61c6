"""The OTLP tests serve the app with uvicorn like the realtime tests (same fixtures)."""

from tests.realtime.conftest import live, serve

__all__ = ["live", "serve"]
