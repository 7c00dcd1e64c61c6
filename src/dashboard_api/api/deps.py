"""FastAPI dependencies: the app context, the caller, role checks, list parameters.

Only the FastAPI side lives here; what a token means is `services/authentication.py`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import StringConstraints

from dashboard_api.api.lean import check_role
from dashboard_api.auth import Principal, Role
from dashboard_api.context import AppContext, LiveDelivery
from dashboard_api.db.paging import PageRequest
from dashboard_api.errors import ServiceUnavailable, Unprocessable
from dashboard_api.services.authentication import authenticate
from dashboard_api.task_statuses import FAILURE_REASONS

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


# Dependencies are `async def` even when they never await: FastAPI runs a plain `def`
# dependency in the thread pool, a thread hop per request that costs more than its body.


async def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


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
        return check_role(principal, roles)

    return Depends(check)


ANY_ROLE: tuple[Role, ...] = ("admin", "user", "agent")
AnyRole = Annotated[Principal, require_roles(*ANY_ROLE)]
USER_ROLE: tuple[Role, ...] = ("admin", "user")
UserRole = Annotated[Principal, require_roles(*USER_ROLE)]
AgentRole = Annotated[Principal, require_roles("admin", "agent")]
AdminRole = Annotated[Principal, require_roles("admin")]


async def page_request(
    page: Annotated[
        int | None,
        Query(ge=1, le=10_000_000, description="1-based page (offset paging); not with `cursor`"),
    ] = None,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=4096,
            description=(
                "Keyset paging: the `next_cursor` of the previous page, with the same filters; "
                "not with `page`. Opaque: a cursor the service did not issue is 422."
            ),
        ),
    ] = None,
) -> PageRequest:
    if page is not None and cursor is not None:
        raise Unprocessable("Give either `page` or `cursor`, not both.", loc=["query", "cursor"])
    return PageRequest(per_page=per_page, page=page, cursor=cursor)


PageDep = Annotated[PageRequest, Depends(page_request)]


# PostgreSQL text cannot hold NUL, so a filter containing one is refused (on both backends).
NO_NUL = r"^[^\x00]*$"
MULTI_DESCRIPTION = "Repeatable (`?x=a&x=b`) or a comma list (`?x=a,b`)"


def choice_items(allowed: Sequence[str]) -> StringConstraints:
    """The schema of one value of a repeatable filter of known values, as `split_multi`
    reads it: a comma list of them, blanks and spaces around each ignored."""
    one = "|".join(re.escape(v) for v in allowed)
    return StringConstraints(pattern=rf"^\s*(?:(?:{one})\s*)?(?:,\s*(?:(?:{one})\s*)?)*$")


# A repeatable filter of free values (agent types, sources...).
MultiFilter = Annotated[
    list[Annotated[str, StringConstraints(pattern=NO_NUL)]] | None,
    Query(description=MULTI_DESCRIPTION),
]


# The `failure_reason` filter of task lists and analytics (docs/api.md §13).
FailureReasonFilter = Annotated[
    list[Annotated[str, choice_items(FAILURE_REASONS)]] | None,
    Query(
        description=(
            "Only tasks with one of these `failure_reason`s: `lease_expired` or `agent`; "
            "repeatable or comma list"
        )
    ),
]


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


def live_of(ctx: AppContext) -> LiveDelivery:
    """The realtime layer the live routes hand over to; 503 before the lifespan opened it."""
    if ctx.realtime is None:
        raise ServiceUnavailable("realtime layer", "Live events are not available.")
    return ctx.realtime
