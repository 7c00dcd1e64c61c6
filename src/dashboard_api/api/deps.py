"""FastAPI dependencies: the app context, the caller, role checks, list parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dashboard_api.auth import Principal, Role, hash_token
from dashboard_api.context import AppContext
from dashboard_api.db.paging import PageRequest
from dashboard_api.errors import Forbidden, TooManyRequests, Unauthorized, Unprocessable
from dashboard_api.security.ratelimit import retry_after_header
from dashboard_api.services.tokens import resolve_token

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


# Dependencies are `async def` even when they never await: FastAPI runs a plain `def`
# dependency in the thread pool, a thread hop per request that costs more than its body.


async def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


async def authenticate(ctx: AppContext, token: str | None) -> Principal:
    """Resolve a clear token to its principal (cached briefly); 401 when unknown."""
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


async def get_principal(
    request: Request,
    ctx: CtxDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = await authenticate(ctx, credentials.credentials if credentials else None)
    request.state.principal = principal
    return principal


def require_roles(*roles: Role) -> object:
    """A dependency that admits only the given roles (403 for any other)."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"This needs one of the roles: {', '.join(roles)}.")
        return principal

    return Depends(check)


AnyRole = Annotated[Principal, require_roles("admin", "user", "agent")]
UserRole = Annotated[Principal, require_roles("admin", "user")]
AgentRole = Annotated[Principal, require_roles("admin", "agent")]
AdminRole = Annotated[Principal, require_roles("admin")]


async def page_request(
    page: Annotated[int | None, Query(ge=1, le=10_000_000, description="1-based page")] = None,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=4096, description="Opaque cursor from `next_cursor`")
    ] = None,
) -> PageRequest:
    if page is not None and cursor is not None:
        raise Unprocessable("Give either `page` or `cursor`, not both.", loc=["query", "cursor"])
    return PageRequest(per_page=per_page, page=page, cursor=cursor)


PageDep = Annotated[PageRequest, Depends(page_request)]


def split_multi(
    values: Sequence[str] | None, *, name: str, allowed: Sequence[str] | None = None
) -> list[str]:
    """Repeatable filters accept both `?x=a&x=b` and `?x=a,b`; unknown values are 422."""
    out: list[str] = []
    for value in values or ():
        out.extend(v.strip() for v in value.split(",") if v.strip())
    if any("\x00" in v for v in out):
        # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the query.
        raise Unprocessable(f"{name} must not contain NUL characters.", loc=["query", name])
    if allowed is not None:
        bad = [v for v in out if v not in allowed]
        if bad:
            raise Unprocessable(
                f"Unknown {name}: {', '.join(bad)}. Allowed: {', '.join(allowed)}.",
                loc=["query", name],
            )
    return list(dict.fromkeys(out))
