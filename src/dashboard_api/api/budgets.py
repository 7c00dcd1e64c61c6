"""`/api/budgets`: spending caps per scope and calendar period (docs/api.md §14)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from dashboard_api.api.deps import AdminRole, CtxDep, UserRole
from dashboard_api.schemas.budgets import BudgetIn, BudgetOut
from dashboard_api.schemas.common import Items, problem_responses
from dashboard_api.services.budgets import service

router = APIRouter(prefix="/api/budgets", tags=["budgets"], responses=problem_responses(401, 403))
BudgetIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:@-]{1,255}$")]


@router.get("", response_model=Items[BudgetOut])
async def list_budgets(ctx: CtxDep, _: UserRole) -> Items[BudgetOut]:
    """Every budget with its live spend and state in its current period."""
    async with ctx.db.read() as session:
        items = await service.list_budgets(session, now=ctx.clock.now())
    return Items[BudgetOut].model_validate({"items": items})


@router.put("/{budget_id}", response_model=BudgetOut, responses=problem_responses(422))
async def put_budget(
    ctx: CtxDep, _: AdminRole, budget_id: BudgetIdPath, body: BudgetIn
) -> BudgetOut:
    """Create or replace a budget (admin). Its state is recomputed at once: raising the
    limit of a held budget lets claims take its queued tasks again."""
    async with ctx.db.write() as session:
        doc = await service.put_budget(session, budget_id=budget_id, body=body, now=ctx.clock.now())
    return BudgetOut.model_validate(doc)


@router.delete("/{budget_id}", status_code=204, responses=problem_responses(404))
async def delete_budget(ctx: CtxDep, _: AdminRole, budget_id: BudgetIdPath) -> Response:
    """Delete a budget (admin); a hold it had ends with it."""
    async with ctx.db.write() as session:
        await service.delete_budget(session, budget_id=budget_id)
    return Response(status_code=204)
