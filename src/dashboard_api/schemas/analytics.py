"""Shapes of the analytics endpoints (docs/api.md §5)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from dashboard_api.timeutil import UtcDateTime

Period = Literal["hour", "day"]


class FailedByReason(BaseModel):
    """Tasks per `failure_reason` (docs/api.md §13)."""

    lease_expired: int = Field(description="Failed by the lease reaper: the lease ran out.")
    agent: int = Field(description="Failed as a producer reported.")


class Summary(BaseModel):
    """Totals of the tasks created in the window."""

    from_: UtcDateTime = Field(serialization_alias="from")
    to: UtcDateTime
    total_tasks: int
    queued_tasks: int
    running_tasks: int
    completed_tasks: int
    failed_tasks: int
    cancelled_tasks: int
    total_cost_usd: float
    avg_cost_per_task_usd: float | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = Field(description="Beyond the contract: cache reads.")
    cache_write_tokens: int = Field(description="Beyond the contract: cache writes.")
    total_tokens: int = Field(description="input + output tokens")
    success_rate: float | None = Field(description="completed / (completed + failed)")
    avg_duration_seconds: float | None
    tasks_per_day: float
    failed_by_reason: FailedByReason = Field(
        description="Beyond the contract: the failed tasks of the window by `failure_reason`."
    )


class HistogramBucket(BaseModel):
    start: UtcDateTime
    tasks: int
    completed: int
    failed: int
    cost_usd: float
    input_tokens: int
    output_tokens: int


class CostHistogram(BaseModel):
    """One bucket per local hour or day of `tz`, contiguous, empty ones included."""

    period: Period
    tz: str
    from_: UtcDateTime = Field(serialization_alias="from")
    to: UtcDateTime
    buckets: list[HistogramBucket]


class Metrics(BaseModel):
    tasks: int
    completed: int
    failed: int
    success_rate: float | None
    avg_duration_seconds: float | None
    p50_duration_seconds: float | None = Field(description="Within 2 % of the nearest rank.")
    p95_duration_seconds: float | None = Field(description="Within 2 % of the nearest rank.")
    total_cost_usd: float
    avg_cost_usd: float | None
    input_tokens: int
    output_tokens: int
    p50_first_output_seconds: float | None = Field(
        description="Beyond the contract: median of first output time minus start time "
        "(within 2 %), over tasks that have both."
    )


class AgentTypeMetrics(Metrics):
    agent_type: str


class SourceMetrics(Metrics):
    source: str


class ModelMetrics(Metrics):
    model: str | None


class Performance(BaseModel):
    from_: UtcDateTime = Field(serialization_alias="from")
    to: UtcDateTime
    overall: Metrics
    by_agent_type: list[AgentTypeMetrics]
    by_source: list[SourceMetrics]
    by_model: list[ModelMetrics] = Field(description="Beyond the contract: per model.")
