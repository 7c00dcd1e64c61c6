"""Complete the generated OpenAPI schema with the problem answers every operation can give.

Routers document their own resource errors (404, 409...). The cross-cutting answers —
a malformed body (400), no token (401), a role that may not (403), a body over the limit
(413), validation (422), rate limiting (429), a dependency down (503) — come from
middleware and dependencies, so they are added here, once, for every operation, from what
each route actually depends on. This keeps `/openapi.json` truthful for features that
land later without each router repeating the list (schemathesis checks it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.types import Scope

from dashboard_api.api.deps import get_principal
from dashboard_api.schemas.common import Problem, problem_description

# The rules every operation follows that a JSON Schema of one parameter or body cannot say.
API_DESCRIPTION = """\
Tasks, live output, analytics, conversations and integrations of AI coding agents.

Rules that hold for every operation (each operation's description repeats the ones it uses):

- **Types are strict.** A value is taken only in the JSON type its schema gives: `"5"` or
  `5.0` is no integer, `1` no boolean, and a timestamp is an RFC 3339 string
  (`2026-11-25T17:03:44Z`; any offset, none means UTC), never a number. Otherwise 422.
- **Text is stored as given**, so it may not hold U+0000 (NUL) or an unpaired surrogate
  (`\\ud800`), which the database cannot store: 422.
- **Windows.** Where an operation takes `from` and `to`, `from` may not come after `to`
  (analytics: must come before it), and a `to` given alone must leave room for the default
  window: else 422.
- **Paging.** A list takes either `page` (offset paging) or `cursor` (keyset paging, the
  `next_cursor` of a previous page, with the same filters), not both: 422. A cursor is
  opaque: one the service did not issue is 422.
- **Errors** are RFC 9457 problem documents (`application/problem+json`).
"""

PROBLEM_JSON = "application/problem+json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_ALL_ROLES = frozenset({"admin", "user", "agent"})


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dep in dependant.dependencies:
        yield dep
        yield from _dependencies(dep)


def api_routes(app: FastAPI) -> list[Any]:
    """Every API route of the app, routers included (FastAPI nests included routers)."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # FastAPI before nested router contexts: routes are flat
        return [r for r in app.routes if isinstance(r, APIRoute)]
    return [
        context
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods of the resource the request's path names, for a 405's `Allow`.

    The resource is the first path template (in routing order) that matches the path, as
    the schema groups operations: `/api/tasks/claim` is its own resource even though
    `/api/tasks/{task_id}` would also match it.
    """
    template: str | None = None
    methods: set[str] = set()
    for context in api_routes(app):
        if not context.route.path_regex.match(scope["path"]):
            continue
        template = template or context.path_format
        if context.path_format == template:
            methods |= set(context.methods)
    return sorted(methods)


def route_access(route: Any) -> tuple[bool, frozenset[str]]:
    """Whether the route needs a token, and which roles it admits (all when unrestricted)."""
    needs_token = False
    roles: frozenset[str] = _ALL_ROLES
    for dep in _dependencies(route.dependant):
        call: Callable[..., Any] | None = dep.call
        if call is get_principal:
            needs_token = True
        if call is not None and getattr(call, "__qualname__", "").startswith("require_roles."):
            admitted = inspect.getclosurevars(call).nonlocals.get("roles")
            if admitted is not None:
                roles = roles & frozenset(admitted)
    return needs_token, roles


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": problem_description(status),
        "content": {PROBLEM_JSON: {"schema": dict(_PROBLEM_REF)}},
    }


def _normalize(responses: dict[str, Any]) -> None:
    """Error answers are problem documents: their schema belongs under problem+json."""
    for code, response in responses.items():
        if code[:1] not in ("4", "5"):
            continue
        content = response.get("content") or {}
        plain = content.get("application/json", {}).get("schema")
        is_problem = PROBLEM_JSON in content or plain in (
            _PROBLEM_REF,
            {"$ref": "#/components/schemas/HTTPValidationError"},
        )
        if is_problem:
            # Other encodings a route documents (OTLP's protobuf Status) stay.
            others = {
                k: v for k, v in content.items() if k not in (PROBLEM_JSON, "application/json")
            }
            response["content"] = {PROBLEM_JSON: {"schema": dict(_PROBLEM_REF)}, **others}


# Operations open by default whose token requirement is a setting: the schema states the
# configuration the app runs with (DASHBOARD_METRICS_REQUIRE_TOKEN for /metrics).
METRICS_PATH = "/metrics"


def complete_schema(
    app: FastAPI, schema: dict[str, Any], *, metrics_need_token: bool = False
) -> dict[str, Any]:
    """Add the cross-cutting problem answers to every operation of `schema` (in place)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "Problem" not in components:
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem.pop("$defs", {}))
        components["Problem"] = problem
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        needs_token, roles = route_access(route)
        path_item = schema.get("paths", {}).get(route.path_format, {})
        for method in route.methods:
            operation = path_item.get(method.lower())
            if operation is None:
                continue
            statuses = {503}
            if route.body_field is not None:
                statuses |= {400, 413, 422}
            if route.dependant.query_params or route.dependant.path_params:
                statuses.add(422)
            if route.dependant.header_params:
                statuses.add(422)
            if route.path_format == METRICS_PATH:
                if metrics_need_token:
                    statuses.add(401)
                else:
                    operation["security"] = []  # open: no token is asked for nor checked
            if needs_token:
                statuses |= {401, 429}
            if roles != _ALL_ROLES:
                statuses.add(403)
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                responses.setdefault(str(status), _problem_response(status))
            _normalize(responses)
    return schema


def install(app: FastAPI, *, metrics_need_token: bool = False) -> None:
    """Make `app.openapi()` return the completed schema (built once, then cached)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_schema(
                app, generate(), metrics_need_token=metrics_need_token
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
