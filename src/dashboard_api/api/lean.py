"""A lean request path for the hottest reads, beside FastAPI's.

FastAPI solves a route's dependencies and validates each parameter through Pydantic on
every request: for the task list (twenty query parameters in three dependencies) that
cost more CPU than its queries. A route of `LeanRoute` may register a lean handler for
its endpoint (`lean_path`): it reads the request itself and answers it, or returns None
for anything it does not take as plainly valid, and FastAPI's handler answers instead.

So a lean handler must accept only requests FastAPI accepts, with the same values, and
must do nothing with side effects (authentication: rate limits count) before it knows it
answers: every error document, and the order in which errors are found, stays FastAPI's.
The route stays declared as before, so the OpenAPI schema does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param

from dashboard_api.auth import Principal, Role
from dashboard_api.context import AppContext
from dashboard_api.errors import Forbidden
from dashboard_api.services.authentication import authenticate

LeanHandler = Callable[[Request], Awaitable[Response | None]]
_LEAN: dict[Callable[..., Any], LeanHandler] = {}


def lean_path(endpoint: Callable[..., Any]) -> Callable[[LeanHandler], LeanHandler]:
    """Register the decorated function as `endpoint`'s lean handler."""

    def register(handler: LeanHandler) -> LeanHandler:
        _LEAN[endpoint] = handler
        return handler

    return register


class LeanRoute(APIRoute):
    """An APIRoute whose requests go to its endpoint's lean handler first, if it has one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        full = super().get_route_handler()
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            # Looked up per request: the route is built when its endpoint is declared,
            # before the lean handler below it is registered.
            lean = _LEAN.get(endpoint)
            if lean is not None and (response := await lean(request)) is not None:
                return response
            return await full(request)

        return handler


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer` header, as FastAPI's HTTPBearer
    (auto_error=False) reads it for `deps.get_principal`."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


def check_role(principal: Principal, roles: tuple[Role, ...]) -> Principal:
    """403 unless the principal has one of the roles."""
    if principal.role not in roles:
        raise Forbidden(f"This needs one of the roles: {', '.join(roles)}.")
    return principal


async def lean_principal(request: Request, roles: tuple[Role, ...]) -> Principal:
    """The caller, as the role dependencies of `deps` find it (401, 429 and 403 alike)."""
    ctx: AppContext = request.app.state.ctx
    principal = await authenticate(ctx, bearer_token(request.headers.get("Authorization")))
    request.state.principal = principal
    return check_role(principal, roles)
