"""Which lean handlers answered: a test's proof that a plain request took the lean path
and not the FastAPI route declared behind it."""

from __future__ import annotations

import pytest

from dashboard_api.api import lean


def record_lean_answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap every lean handler for the test; the list gets a handler's name each time it
    answers a request itself (not None)."""
    answered: list[str] = []
    for endpoint, handler in list(lean._LEAN.items()):

        async def counted(request: object, handler: lean.LeanHandler = handler) -> object:
            response = await handler(request)  # type: ignore[arg-type]
            if response is not None:
                answered.append(handler.__name__)
            return response

        monkeypatch.setitem(lean._LEAN, endpoint, counted)
    return answered
