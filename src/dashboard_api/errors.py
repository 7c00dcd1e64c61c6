"""RFC 9457 problem documents: the exceptions services raise, rendered by the app's handlers."""

from __future__ import annotations

import logging
from typing import Any

ABOUT_BLANK = "about:blank"


class ProblemError(Exception):
    """An error with an HTTP status; services raise these without knowing about HTTP."""

    status: int = 500
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or (title or self.title)
        if title is not None:
            self.title = title
        self.headers = headers or {}
        self.extra = extra or {}


class BadRequest(ProblemError):
    status, title = 400, "Bad Request"


class Unauthorized(ProblemError):
    status, title = 401, "Unauthorized"

    def __init__(self, detail: str = "A valid bearer token is required.") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ProblemError):
    status, title = 403, "Forbidden"


class NotFound(ProblemError):
    status, title = 404, "Not Found"


class Conflict(ProblemError):
    status, title = 409, "Conflict"


class PayloadTooLarge(ProblemError):
    status, title = 413, "Content Too Large"


class Unprocessable(ProblemError):
    """A validation failure found after parsing (same shape as FastAPI's 422)."""

    status, title = 422, "Unprocessable Content"

    def __init__(
        self, detail: str, *, loc: list[str | int] | None = None, type_: str = "value_error"
    ):
        errors = [{"loc": loc or [], "msg": detail, "type": type_}]
        super().__init__(detail, extra={"errors": errors})


class TooManyRequests(ProblemError):
    status, title = 429, "Too Many Requests"


class ServiceUnavailable(ProblemError):
    status, title = 503, "Service Unavailable"

    def __init__(self, dependency: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"The {dependency} is unavailable.", extra={"dependency": dependency}
        )


def problem_body(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of a problem document."""
    body: dict[str, Any] = {"type": ABOUT_BLANK, "title": title, "status": status, "detail": detail}
    body.update(extra)
    return body


log = logging.getLogger("dashboard_api.errors")
