"""Wiring of logs and metrics into an app (called once by `create_app`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from dashboard_api.observability.logging import configure_logging
from dashboard_api.observability.metrics import Metrics
from dashboard_api.observability.middleware import ObservabilityMiddleware


def install_observability(app: FastAPI, ctx: Any) -> Metrics:
    """Configure logging, give the app its metrics registry and the outermost middleware."""
    configure_logging(ctx.settings)
    metrics = Metrics(cache_seconds=ctx.settings.metrics_cache_seconds)
    metrics.bind(lambda: ctx)
    ctx.metrics = metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return metrics


def metrics_of(ctx: Any) -> Metrics:
    """The app's metrics (a fresh, unexported set when observability is not installed)."""
    found = ctx.metrics
    if not isinstance(found, Metrics):
        found = ctx.metrics = Metrics()
        found.bind(lambda: ctx)
    return found
