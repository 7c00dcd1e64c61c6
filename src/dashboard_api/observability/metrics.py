"""Prometheus metrics of one app, in a registry of its own (tests build many apps).

HTTP requests are counted and timed per route template by `ObservabilityMiddleware`.
Realtime and task figures are read at scrape time, so the hot paths pay nothing:

- the realtime layer's objects are read duck-typed, first found wins, from
  `ctx.realtime`, `ctx.hub` and `ctx.broker`: `connection_count`,
  `subscription_count`, `events_published`, `events_received`, `events_delivered`,
  `events_dropped`, `events_delivered_shared`, `group_leaves`, `group_dissolves`,
  `slow_consumer_disconnects`, `reconnects`, `publish_failures`
  (monotonic ints; a missing one reads as 0), and with Redis the ingress's messages by
  outcome (stored, skipped, duplicate, dropped_without_id) and whether it leads
  (`ctx.ingress`).
  `events_published` falls back to the count this module keeps of what the database
  publisher was handed, and
  `slow_consumer_disconnects` to the WebSocket sessions the middleware saw end with 1013;
- task counts by status are refreshed by `/metrics` before rendering: queued and running
  (index ranges) every `metrics_cache_seconds`, the ended statuses (a count over most of
  the table: ~0.3 s on 1M tasks) at most once a minute;
- per periodic job (`ctx.jobs`, jobs/runner.py): runs, failures, time spent
  running and whether this replica leads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from dashboard_api import __version__

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE = "<unmatched>"
LIVE_STATUSES = ("queued", "running")
FULL_COUNT_FACTOR = 12

# attribute read from the realtime objects -> (metric name, help)
_REALTIME_COUNTERS: dict[str, tuple[str, str]] = {
    "events_published": ("dashboard_events_published", "Events handed to the broker"),
    "events_received": ("dashboard_events_received", "Broker messages received by the hub"),
    "events_delivered": ("dashboard_events_delivered", "Events queued to local subscribers"),
    "events_dropped": ("dashboard_events_dropped", "Events not delivered (full or closed)"),
    "events_delivered_shared": (
        "dashboard_events_delivered_shared",
        "Of the live events delivered, those written by a channel group's shared write",
    ),
    "group_leaves": (
        "dashboard_ws_group_leaves",
        "Subscriptions that left their channel group for the per-subscription path",
    ),
    "group_dissolves": (
        "dashboard_ws_group_dissolves",
        "Channel groups dissolved by an event needing per-subscription judgement",
    ),
    "slow_consumer_disconnects": (
        "dashboard_ws_slow_consumer_disconnects",
        "WebSocket connections closed with 1013 because their send queue was full",
    ),
    "reconnects": ("dashboard_broker_reconnects", "Broker subscriber reconnections"),
    "publish_failures": ("dashboard_broker_publish_failures", "Events the broker failed to send"),
}


class _ScrapeCollector(Collector):
    """Yields the figures that are read, not counted, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        info = GaugeMetricFamily("dashboard_info", "Build information", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        sources = m.realtime_sources()
        yield GaugeMetricFamily(
            "dashboard_ws_connections",
            "Open WebSocket connections on this replica",
            value=_read(sources, "connection_count"),
        )
        yield GaugeMetricFamily(
            "dashboard_ws_subscriptions",
            "Channel subscriptions on this replica (WebSocket and SSE)",
            value=_read(sources, "subscription_count"),
        )
        broker = m.ctx_getter().broker if m.ctx_getter is not None else None
        healthy = getattr(broker, "healthy", True) if broker is not None else True
        yield GaugeMetricFamily(
            "dashboard_broker_up", "1 when the broker delivers messages", value=float(bool(healthy))
        )
        for attr, (name, doc) in _REALTIME_COUNTERS.items():
            value = _read(sources, attr)
            if attr == "events_published" and not _has(sources, attr):
                value = float(m.events_published)
            if attr == "slow_consumer_disconnects" and not _has(sources, attr):
                value = float(m.slow_consumer_disconnects)
            yield CounterMetricFamily(name, doc, value=value)
        yield CounterMetricFamily(
            "dashboard_analytics_folded_rows",
            "Task writes' rollup contributions this replica folded into the rollups",
            value=float(m.analytics_folded),
        )
        if m.task_counts is not None:
            gauge = GaugeMetricFamily(
                "dashboard_tasks", "Tasks by status (refreshed at most every few seconds)",
                labels=["status"],
            )  # fmt: skip
            for status, count in sorted(m.task_counts.items()):
                gauge.add_metric([status], float(count))
            yield gauge
        jobs = m.ctx_getter().jobs if m.ctx_getter is not None else None
        if jobs is not None:
            yield from _job_metrics(jobs.stats)
        ingress = m.ctx_getter().ingress if m.ctx_getter is not None else None
        if ingress is not None:
            family = CounterMetricFamily(
                "dashboard_ingress_messages",
                "Redis ingress messages handled here, by outcome (docs/api.md section 11)",
                labels=["outcome"],
            )
            for outcome, attr in _INGRESS_OUTCOMES:
                family.add_metric([outcome], float(getattr(ingress, attr, 0)))
            yield family
            leader = GaugeMetricFamily(
                "dashboard_ingress_leader", "1 while this replica stores the Redis ingress"
            )
            leader.add_metric([], float(bool(getattr(ingress, "is_leader", False))))
            yield leader
            eligible = GaugeMetricFamily(
                "dashboard_ingress_eligible",
                "1 once this replica has listened to the Redis ingress for its whole hold "
                "window (it may then take over the lead at once)",
            )
            eligible.add_metric([], float(bool(getattr(ingress, "eligible", False))))
            yield eligible


# Ingress outcome label -> counter attribute of ingress.Ingress.
_INGRESS_OUTCOMES = (
    ("stored", "stored"),
    ("skipped", "skipped"),
    ("duplicate", "duplicates"),
    ("dropped_without_id", "dropped_without_id"),
)


def _job_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """Per periodic job (jobs/runner.py `JobStats`): runs, failures, time, lead."""
    runs = CounterMetricFamily(
        "dashboard_job_runs", "Runs of each periodic job on this replica", labels=["job"]
    )
    failures = CounterMetricFamily(
        "dashboard_job_failures",
        "Runs of each periodic job on this replica that raised (retried at the next interval)",
        labels=["job"],
    )
    seconds = SummaryMetricFamily(
        "dashboard_job_run_seconds", "Time spent in runs of each periodic job", labels=["job"]
    )
    leader = GaugeMetricFamily(
        "dashboard_job_leader",
        "1 while this replica leads the periodic job (one replica at a time does)",
        labels=["job"],
    )
    for name, s in sorted(stats.items()):
        runs.add_metric([name], float(s.runs))
        failures.add_metric([name], float(s.failures))
        seconds.add_metric([name], count_value=s.runs, sum_value=s.seconds)
        leader.add_metric([name], float(s.leader))
    yield from (runs, failures, seconds, leader)


def _has(sources: Sequence[Any], attr: str) -> bool:
    return any(isinstance(getattr(s, attr, None), int | float) for s in sources)


def _read(sources: Sequence[Any], attr: str) -> float:
    for source in sources:
        value = getattr(source, attr, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0


class Metrics:
    """The counters and histograms of one app, and the registry that exposes them."""

    def __init__(self, *, cache_seconds: float = 5.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "dashboard_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "dashboard_http_request_duration_seconds",
            "HTTP request latency by method and route template (until the response ends)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ws_sessions = Counter(
            "dashboard_ws_sessions",
            "WebSocket sessions handled, by close outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.exported_rows = Counter(
            "dashboard_export_rows",
            "Task summaries read for GET /api/tasks/export, by format",
            ["format"],
            registry=self.registry,
        )
        self.leases_expired = Counter(
            "dashboard_leases_expired",
            "Running tasks failed by the lease reaper (their agent went silent), by agent type",
            ["agent_type"],
            registry=self.registry,
        )
        self.index_job_leases_expired = Counter(
            "dashboard_index_job_leases_expired",
            "Running index jobs failed by the lease reaper (their indexer went silent)",
            registry=self.registry,
        )
        self.retries_created = Counter(
            "dashboard_task_retries_created",
            "Retries of failed or cancelled tasks created: `manual` (POST .../retry) or "
            "`automatic` (a lease expiry with attempts left)",
            ["trigger"],
            registry=self.registry,
        )
        self.ctx_getter: Callable[[], Any] | None = None
        self.events_published = 0
        self.analytics_folded = 0  # pending rollup contributions this replica folded
        self.slow_consumer_disconnects = 0  # seen by the middleware (close code 1013)
        self.cache_seconds = cache_seconds
        self.task_counts: dict[str, int] | None = None
        self._task_counts_at = -1e18
        self._full_counts_at = -1e18
        self._refresh_lock = asyncio.Lock()
        self.registry.register(_ScrapeCollector(self))

    def bind(self, ctx_getter: Callable[[], Any]) -> None:
        """Where to find the app context (its hub and broker are set in the lifespan)."""
        self.ctx_getter = ctx_getter

    def realtime_sources(self) -> list[Any]:
        if self.ctx_getter is None:
            return []
        ctx = self.ctx_getter()
        found = [ctx.realtime, ctx.hub, ctx.broker]
        return [s for s in found if s is not None]

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one HTTP request."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def count_published(self, n: int) -> None:
        self.events_published += n

    def count_folded(self, n: int) -> None:
        self.analytics_folded += n

    def count_exported(self, format_: str, n: int) -> None:
        self.exported_rows.labels(format_).inc(n)

    async def refresh_task_counts(
        self,
        fetch: Callable[[Sequence[str] | None], Awaitable[dict[str, int]]],
        *,
        timeout: float,
    ) -> None:
        """Re-read task counts older than `cache_seconds`.

        Queued and running are ranges of the status index (cheap) and follow
        `cache_seconds`; the ended statuses need a count over most of the table, so
        they are re-read only every `FULL_COUNT_FACTOR` periods (at least a minute).
        """
        async with self._refresh_lock:
            now = time.monotonic()
            if now - self._task_counts_at < self.cache_seconds:
                return
            full = now - self._full_counts_at >= max(60.0, self.cache_seconds * FULL_COUNT_FACTOR)
            try:
                async with asyncio.timeout(timeout):
                    fresh = await fetch(None if full else LIVE_STATUSES)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a scrape must not fail because the database did
                log.warning("task counts for /metrics unavailable: %s", exc)
                self.task_counts = None
                self._full_counts_at = -1e18
            else:
                if full or self.task_counts is None:
                    self.task_counts = fresh
                    self._full_counts_at = now
                else:
                    self.task_counts.update(fresh)
            self._task_counts_at = now
