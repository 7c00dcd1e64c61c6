"""Budgets on the wire (docs/api.md §14)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue, StringConstraints, field_validator

from dashboard_api.schemas.common import ApiModel
from dashboard_api.timeutil import TIME_ZONES, UtcDateTime

BudgetPeriod = Literal["day", "week", "month"]
BudgetAction = Literal["notify", "hold", "hold_and_cancel"]
BudgetState = Literal["ok", "warning", "exceeded"]
Dimension = Annotated[str, StringConstraints(min_length=1, max_length=64)]
LongDimension = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class BudgetScope(ApiModel):
    """Which tasks count (every field left out: any). Empty: the whole fleet."""

    agent_type: Dimension | None = None
    user_id: LongDimension | None = None
    source: Dimension | None = None
    flow_id: LongDimension | None = None


_TIME_ZONES: list[JsonValue] = [*TIME_ZONES]  # the schema lists the zones it takes


class BudgetIn(ApiModel):
    """`PUT /api/budgets/{budget_id}`: the whole budget (create or replace)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    scope: BudgetScope = Field(default_factory=BudgetScope)
    period: BudgetPeriod
    tz: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        "UTC",
        description="IANA time zone of the period's edges.",
        json_schema_extra={"enum": _TIME_ZONES},
    )
    limit_usd: float = Field(ge=0, le=1e12)
    # Bounds in the schema too (exclusive), so that it states what `_fractions` checks.
    warn_at: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.8],
        max_length=10,
        description="Fractions of the limit (0 < f < 1) from which the state is `warning`.",
    )
    action: BudgetAction = "notify"

    @field_validator("limit_usd")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("warn_at")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        for f in value:
            if not (0 < f < 1):
                raise ValueError("each fraction must be strictly between 0 and 1")
        return sorted(set(value))


class BudgetOut(BaseModel):
    """A budget with its live spend in the current period."""

    budget_id: str
    name: str
    scope: dict[str, str]
    period: BudgetPeriod
    tz: str
    limit_usd: float
    warn_at: list[float]
    action: BudgetAction
    spent_usd: float
    remaining_usd: float
    period_start: UtcDateTime
    period_end: UtcDateTime
    state: BudgetState
    held: bool = Field(
        description="Beyond the contract: claims skip queued tasks in scope right now."
    )
    created_at: UtcDateTime
    updated_at: UtcDateTime
