"""Budget definitions, their live documents, the hold set by task writes, and the
periodic evaluation that announces state changes (docs/api.md §14).

Who writes a budget's `state`, `state_period_start` and `held_until`: the PUT, the task
write hook (for `hold` budgets, in the transaction of the write that changes spend), and
the evaluation job. Each locks the budget row and recomputes the spend under that lock,
so their writes are serialized and each is computed from every commit before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import emit
from dashboard_api.db.models import Task
from dashboard_api.db.models.guards import Budget
from dashboard_api.errors import NotFound, Unprocessable
from dashboard_api.money import micros_to_usd, usd_to_micros
from dashboard_api.schemas.budgets import BudgetIn
from dashboard_api.services.budgets.periods import period_bounds
from dashboard_api.services.budgets.spend import Scope, spend_micros
from dashboard_api.timeutil import format_ts

BUDGETS_CHANNEL = "budgets"
HOLD_ACTIONS = ("hold", "hold_and_cancel")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Unprocessable(f"Unknown time zone {name!r}.", loc=["body", "tz"]) from None


# The `hold` budgets' scopes, which every write that changes a cost reads: Core columns
# of a statement built once (the ORM's load of whole rows cost twice the round trip).
_B = Budget.__table__.c
_HOLD_SCOPES = select(
    _B.budget_id, _B.scope_agent_type, _B.scope_user_id, _B.scope_source, _B.scope_flow_id
).where(_B.action.in_(HOLD_ACTIONS))


def scope_of(row: Any) -> Scope:  # a Budget, or a row with its scope columns
    return Scope(row.scope_agent_type, row.scope_user_id, row.scope_source, row.scope_flow_id)


def state_of(spent: int, limit: int, warn_at: Sequence[float]) -> str:
    """`exceeded` at or over the limit, `warning` from the lowest warning fraction."""
    if spent >= limit:
        return "exceeded"
    if warn_at and spent >= min(warn_at) * limit:
        return "warning"
    return "ok"


@dataclass(frozen=True, slots=True)
class Figures:
    """A budget's spend in one period and the state it makes."""

    start: datetime
    end: datetime
    spent: int
    state: str


async def figures(session: AsyncSession, row: Budget, at: datetime) -> Figures:
    """The budget's figures for the period holding `at`."""
    start, end = period_bounds(row.period, zone(row.tz), at)  # type: ignore[arg-type]
    spent = await spend_micros(session, scope_of(row), start, end)
    return Figures(start, end, spent, state_of(spent, row.limit_micros, row.warn_at))


def document(row: Budget, f: Figures, now: datetime) -> dict[str, Any]:
    """The budget as docs/api.md §14 shows it (JSON-ready)."""
    return {
        "budget_id": row.budget_id,
        "name": row.name,
        "scope": scope_of(row).as_dict(),
        "period": row.period,
        "tz": row.tz,
        "limit_usd": micros_to_usd(row.limit_micros),
        "warn_at": list(row.warn_at),
        "action": row.action,
        "spent_usd": micros_to_usd(f.spent),
        "remaining_usd": micros_to_usd(max(0, row.limit_micros - f.spent)),
        "period_start": format_ts(f.start),
        "period_end": format_ts(f.end),
        "state": f.state,
        "held": row.held_until is not None and row.held_until > now,
        "created_at": format_ts(row.created_at),
        "updated_at": format_ts(row.updated_at),
    }


def _settle(
    session: AsyncSession, row: Budget, f: Figures, now: datetime, *, new: bool = False
) -> bool:
    """Store the figures' state (and hold) on the locked row; announce a change (and a
    `new` definition's first state). Only the period stored or a later one may move it."""
    if not new and row.state_period_start is not None and f.start < row.state_period_start:
        return False
    held_until = f.end if (row.action in HOLD_ACTIONS and f.state == "exceeded") else None
    changed = new or row.state != f.state or row.state_period_start != f.start
    if not changed and row.held_until == held_until:
        return False
    row.state, row.state_period_start, row.held_until = f.state, f.start, held_until
    if changed:
        emit(session, BUDGETS_CHANNEL, {"type": "budget_state", "budget": document(row, f, now)})
    return changed


async def _locked(session: AsyncSession, budget_id: str) -> Budget | None:
    stmt = dialect_of(session).lock_for_update(select(Budget).where(Budget.budget_id == budget_id))
    result = await session.scalars(stmt.execution_options(populate_existing=True))
    return result.first()


# --- definitions -------------------------------------------------------------------------


async def put_budget(
    session: AsyncSession, *, budget_id: str, body: BudgetIn, now: datetime
) -> dict[str, Any]:
    """Create or replace; the state is recomputed at once (a raised limit lifts a hold)."""
    zone(body.tz)
    row = await _locked(session, budget_id)
    if row is None:
        row = Budget(budget_id=budget_id, state="ok", created_at=now)
        session.add(row)
    row.name = body.name
    row.scope_agent_type = body.scope.agent_type
    row.scope_user_id = body.scope.user_id
    row.scope_source = body.scope.source
    row.scope_flow_id = body.scope.flow_id
    row.period, row.tz, row.action = body.period, body.tz, body.action
    row.limit_micros = usd_to_micros(body.limit_usd)
    row.warn_at = list(body.warn_at)
    row.updated_at = now
    await session.flush()
    f = await figures(session, row, now)
    # A redefinition is announced as a new state: its scope or limit may be another one.
    _settle(session, row, f, now, new=True)
    await session.flush()
    return document(row, f, now)


async def delete_budget(session: AsyncSession, *, budget_id: str) -> None:
    result = await session.execute(delete(Budget).where(Budget.budget_id == budget_id))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"No budget {budget_id!r}.")


async def list_budgets(session: AsyncSession, *, now: datetime) -> list[dict[str, Any]]:
    """Every budget with its live spend (one spend statement each: budgets are few)."""
    rows = (await session.scalars(select(Budget).order_by(Budget.budget_id))).all()
    return [document(row, await figures(session, row, now), now) for row in rows]


# --- the task write hook -----------------------------------------------------------------


async def on_task_written(session: AsyncSession, before: Any, after: Any) -> None:
    """Set or lift the hold of every `hold` budget whose spend this write changes, in the
    write's own transaction (analytics has already recorded the write's contribution).

    Only writes that change a task's cost read anything (a completion, a late cost
    report); the budgets are locked in id order, so concurrent writes in one scope are
    serialized on the row and each computes the spend with the other's cost in it."""
    cost_before = before.cost_micros if before is not None else 0
    if after.cost_micros == cost_before:
        return
    candidates = (await session.execute(_HOLD_SCOPES)).all()
    ids = sorted(b.budget_id for b in candidates if scope_of(b).matches(after))
    for budget_id in ids:
        row = await _locked(session, budget_id)
        if row is None or row.action not in HOLD_ACTIONS:
            continue
        f = await figures(session, row, after.created_at)
        # The write's own time is the task's period, which is the current one for every
        # write that matters: a past period's hold has ended already.
        _settle(session, row, f, f.start)


async def on_tasks_written(session: AsyncSession, writes: Sequence[Any]) -> None:
    """`on_task_written` of several writes ((before, after) pairs of distinct tasks) in
    statements that do not grow with their number: the `hold` budgets read once; each
    one in scope of a write that changes cost locked once, in id order, and settled once
    per period those writes fall in, earliest first. The spend read then includes every
    write of the batch, and a settle never moves a budget back to an earlier period, so
    the state that stands is the one the writes one by one would leave (a state passed
    through within the batch is not announced)."""
    changed = [
        after
        for before, after in writes
        if after.cost_micros != (before.cost_micros if before is not None else 0)
    ]
    if not changed:
        return
    candidates = (await session.execute(_HOLD_SCOPES)).all()
    touching = {
        b.budget_id: [a.created_at for a in changed if scope_of(b).matches(a)] for b in candidates
    }
    for budget_id in sorted(k for k, ats in touching.items() if ats):
        row = await _locked(session, budget_id)
        if row is None or row.action not in HOLD_ACTIONS:
            continue
        one_per_period: dict[datetime, datetime] = {}
        for at in touching[budget_id]:
            start, _ = period_bounds(row.period, zone(row.tz), at)  # type: ignore[arg-type]
            one_per_period[start] = at
        for start in sorted(one_per_period):
            f = await figures(session, row, one_per_period[start])
            _settle(session, row, f, f.start)


# --- the periodic evaluation -------------------------------------------------------------


async def running_in_scope(session: AsyncSession, scope: Scope) -> list[str]:
    """Ids of the running tasks in scope not yet asked to stop."""
    t = Task.__table__.c
    where = [t.status == "running", t.cancel_requested.is_(False)]
    for name, value in scope.as_dict().items():
        where.append(getattr(t, name) == value)
    return list((await session.scalars(select(t.task_id).where(*where).limit(1000))).all())


@dataclass(frozen=True, slots=True)
class Evaluation:
    changed: list[str]  # budgets whose state changed
    to_cancel: list[str]  # running tasks of exceeded hold_and_cancel budgets


async def evaluate_budgets(read: Any, write: Any, *, now: datetime) -> Evaluation:
    """One round: recompute every budget's spend; settle (and announce) those whose state
    or period moved. `read()` and `write()` open sessions (Database.read / write)."""
    stale: list[str] = []
    cancel_scopes: list[Scope] = []
    async with read() as session:
        for row in (await session.scalars(select(Budget))).all():
            f = await figures(session, row, now)
            held = f.end if (row.action in HOLD_ACTIONS and f.state == "exceeded") else None
            if (row.state, row.state_period_start, row.held_until) != (f.state, f.start, held):
                stale.append(row.budget_id)
            if row.action == "hold_and_cancel" and f.state == "exceeded":
                cancel_scopes.append(scope_of(row))
    changed: list[str] = []
    for budget_id in stale:
        async with write() as session:
            row = await _locked(session, budget_id)
            if row is None:
                continue
            if _settle(session, row, await figures(session, row, now), now):
                changed.append(budget_id)
    to_cancel: list[str] = []
    if cancel_scopes:
        async with read() as session:
            for scope in cancel_scopes:
                to_cancel.extend(await running_in_scope(session, scope))
    return Evaluation(changed, sorted(set(to_cancel)))
