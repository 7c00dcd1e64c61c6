"""API token management: create, list, revoke, resolve."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.auth import Principal, Role, digests_equal, generate_token, hash_token
from dashboard_api.db.models import ApiToken
from dashboard_api.errors import NotFound
from dashboard_api.ids import new_id


async def create_token(
    session: AsyncSession, *, user_id: str, role: Role, now: datetime
) -> tuple[str, ApiToken]:
    """Store a new token's digest; the clear token is returned once and never stored."""
    token = generate_token()
    row = ApiToken(
        token_id=new_id(),
        token_hash=hash_token(token),
        prefix=token[:12],
        user_id=user_id,
        role=role,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return token, row


async def list_tokens(session: AsyncSession) -> Sequence[ApiToken]:
    """Every token, newest first (digests stay inside the service)."""
    result = await session.scalars(select(ApiToken).order_by(ApiToken.created_at.desc()))
    return result.all()


async def revoke_token(session: AsyncSession, *, token_id: str, now: datetime) -> ApiToken:
    """Mark a token revoked; it stops working within the token cache's TTL."""
    row = await session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"No token {token_id!r}.")
    if row.revoked_at is None:
        row.revoked_at = now
    return row


async def resolve_token(session: AsyncSession, token: str) -> Principal | None:
    """The principal behind a clear token, or None when unknown or revoked."""
    digest = hash_token(token)
    row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked_at is not None or not digests_equal(row.token_hash, digest):
        return None
    role: Role = row.role  # type: ignore[assignment]
    return Principal(token_id=row.token_id, user_id=row.user_id, role=role)


async def has_active_admin(session: AsyncSession) -> bool:
    """Whether any unrevoked admin token exists (a new install gets one printed)."""
    row = await session.scalar(
        select(ApiToken.token_id)
        .where(ApiToken.role == "admin", ApiToken.revoked_at.is_(None))
        .limit(1)
    )
    return row is not None
