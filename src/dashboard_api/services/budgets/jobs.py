"""The budgets job: one replica at a time, every `budgets_evaluate_interval_seconds`."""

from __future__ import annotations

import logging
from typing import Any

from dashboard_api.db.engine import Database
from dashboard_api.errors import ProblemError
from dashboard_api.services.alerts.evaluate import evaluate_rules
from dashboard_api.services.budgets.service import Evaluation, evaluate_budgets
from dashboard_api.services.tasks import cancel_task
from dashboard_api.settings import Settings

log = logging.getLogger(__name__)


async def run_budgets_once(db: Database, settings: Settings, clock: Any) -> Evaluation:
    """Announce budgets whose state moved, ask running tasks of exceeded
    `hold_and_cancel` budgets to stop, and evaluate the `budget` alert rules at once when
    a state moved (rather than at their next round)."""
    evaluation = await evaluate_budgets(db.read, db.write, now=clock.now())
    for task_id in evaluation.to_cancel:
        try:
            async with db.write() as session:
                await cancel_task(session, task_id=task_id, now=clock.now())
        except ProblemError:  # it ended (409) or was pruned (404) meanwhile
            continue
    if evaluation.changed:
        await evaluate_rules(db, settings, now=clock.now(), kinds={"budget"})
    return evaluation
