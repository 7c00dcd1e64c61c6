"""Demo budgets and alert rules: a fleet budget just under its warning threshold (the
simulated agents' spending pushes it over within minutes) and a failure-rate rule that
the simulated agents' 8 % failures make fire and resolve now and then."""

from __future__ import annotations

import logging

from dashboard_api.context import AppContext
from dashboard_api.schemas.alerts import RuleIn
from dashboard_api.schemas.budgets import BudgetIn
from dashboard_api.services.alerts.rules import put_rule
from dashboard_api.services.budgets.periods import period_bounds
from dashboard_api.services.budgets.service import put_budget, zone
from dashboard_api.services.budgets.spend import Scope, spend_micros

log = logging.getLogger(__name__)

WARN_AT = 0.8
# Today's spend at seeding is this share of the limit: just under the warning.
START_AT = 0.77


async def seed_guards(ctx: AppContext) -> None:
    now = ctx.clock.now()
    start, end = period_bounds("day", zone("UTC"), now)
    async with ctx.db.read() as session:
        spent = await spend_micros(session, Scope(), start, end)
    limit_usd = max(round(spent / 1_000_000 / START_AT, 2), 5.0)
    async with ctx.db.write() as session:
        await put_budget(
            session,
            budget_id="fleet-daily",
            body=BudgetIn(
                name="Fleet spend today",
                period="day",
                tz="UTC",
                limit_usd=limit_usd,
                warn_at=[WARN_AT],
                action="notify",
            ),
            now=now,
        )
        await put_rule(
            session,
            rule_id="failure-rate",
            body=RuleIn(
                name="Failure rate over 10 % (5 min)",
                kind="failure_rate",
                window_minutes=5,
                threshold=0.1,
            ),
            now=now,
        )
        await put_rule(
            session,
            rule_id="budget-warning",
            body=RuleIn(name="A budget is in warning or exceeded", kind="budget", threshold=1),
            now=now,
        )
    log.info("demo: budget fleet-daily (limit $%.2f) and two alert rules", limit_usd)
