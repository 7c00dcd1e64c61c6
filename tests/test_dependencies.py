"""Every route and dependency is a coroutine function.

FastAPI runs a plain `def` endpoint or dependency in the thread pool: a thread hop per
request, which cost the task list about a millisecond of server CPU, more than the
dependency's own body.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant

from dashboard_api.api.openapi import api_routes
from dashboard_api.app import create_app


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for dep in dependant.dependencies:
        yield from _calls(dep)


def _runs_on_the_loop(call: Callable[..., Any]) -> bool:
    for f in (call, getattr(call, "__call__", None)):  # noqa: B004 - instances with async __call__
        if inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f):
            return True
    return False


def test_no_route_or_dependency_runs_in_the_thread_pool() -> None:
    app = create_app()
    sync = sorted(
        {
            f"{route.path}: {getattr(call, '__qualname__', type(call).__qualname__)}"
            for route in api_routes(app)
            for call in _calls(route.dependant)
            if not _runs_on_the_loop(call)
        }
    )
    assert sync == []
