"""Who is calling: a bearer token resolved to its principal, cached briefly, rate limited.

Every transport authenticates through here (REST dependencies in `api/deps.py`, the `/ws`
handshake, `/metrics`), so that a token means the same thing everywhere.
"""

from __future__ import annotations

from dashboard_api.auth import Principal, hash_token
from dashboard_api.context import AppContext
from dashboard_api.errors import TooManyRequests, Unauthorized
from dashboard_api.security.ratelimit import retry_after_header
from dashboard_api.services.tokens import resolve_token


async def authenticate(ctx: AppContext, token: str | None) -> Principal:
    """Resolve a clear token to its principal (cached briefly); 401 when unknown, 429 when
    the token is over its rate limit."""
    if not token:
        raise Unauthorized()
    digest = hash_token(token)
    hit, principal = ctx.tokens.get(digest)
    if not hit:
        async with ctx.db.read() as session:
            principal = await resolve_token(session, token)
        ctx.tokens.put(digest, principal)
    if principal is None:
        raise Unauthorized("The bearer token is invalid or revoked.")
    if ctx.limiter is not None:
        wait = await ctx.limiter.hit(principal.token_id)
        if wait is not None:
            raise TooManyRequests(
                "Rate limit exceeded for this token.",
                headers={"Retry-After": retry_after_header(wait)},
            )
    return principal
