"""`GET /api/me`: the caller's user and role, so that a client can show what that role may do."""

from __future__ import annotations

from fastapi import APIRouter

from dashboard_api.api.deps import AnyRole
from dashboard_api.schemas.common import problem_responses
from dashboard_api.schemas.session import Me

router = APIRouter(tags=["system"])


@router.get("/api/me", response_model=Me, responses=problem_responses(401, 503))
async def me(principal: AnyRole) -> Me:
    """The calling token's user id, role and token id; 401 for a token that is invalid,
    expired or revoked (what a signed-in page checks before it shows anything)."""
    return Me(user_id=principal.user_id, role=principal.role, token_id=principal.token_id)
