"""The app's error answers: every exception a request raises becomes a problem document.

Services raise `ProblemError`s without knowing about HTTP; validation, routing and body
limits raise Starlette's and FastAPI's own; the database's driver errors are classified by
the app's dialect. Anything else is a 500 whose traceback goes to the log, not the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboard_api.api.openapi import allowed_methods
from dashboard_api.context import AppContext
from dashboard_api.db.dialect import DatabaseFault
from dashboard_api.errors import PayloadTooLarge, ProblemError, problem_body

log = logging.getLogger("dashboard_api")

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, title, detail, **extra),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_JSON,
    )


# Errors that mean "the database is not answering", as opposed to a bad query.
_DB_DOWN = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes a problem document (RFC 9457); the database's own errors are
    read by the app's dialect (`DatabaseFault`): 503 when it cannot take work, 422 for
    text it cannot store, 500 (logged) for the rest."""

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors[:5]
        )
        return problem_response(
            422, "Unprocessable Content", detail or "Invalid request.", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, PayloadTooLarge):
            too_large = exc.__cause__
            return problem_response(413, too_large.title, too_large.detail)
        title = _TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (methods := allowed_methods(app, request.scope)):
            # Starlette names only the methods of the first route that matched the path.
            headers["Allow"] = ", ".join(methods)
        return problem_response(exc.status_code, title, detail, headers)

    @app.exception_handler(sa_exc.IntegrityError)
    async def _integrity(_: Request, exc: sa_exc.IntegrityError) -> JSONResponse:
        # A race lost to a concurrent writer of the same key (e.g. two registrations).
        log.info("integrity conflict: %s", exc.orig)
        return problem_response(
            409, "Conflict", "The resource was changed concurrently or already exists."
        )

    for exc_type in _DB_DOWN:
        app.add_exception_handler(exc_type, _database_down)
    app.add_exception_handler(sa_exc.DBAPIError, _dbapi_error)
    app.add_exception_handler(Exception, _unexpected)


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return problem_response(
        503,
        "Service Unavailable",
        "The database is unavailable.",
        {"Retry-After": "1"},
        dependency="database",
    )


async def _dbapi_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return await _database_down(request, exc)
        ctx: AppContext = request.app.state.ctx
        fault = ctx.db.dialect.classify_error(exc.orig)
        if fault is DatabaseFault.UNAVAILABLE:
            return await _database_down(request, exc)
        if fault is DatabaseFault.CONTENTION:
            log.warning("transaction aborted by contention, client may retry: %s", exc.orig)
            return problem_response(
                503,
                "Service Unavailable",
                "The database aborted the transaction to resolve contention; nothing was "
                "written. Retry the request.",
                {"Retry-After": "1"},
                dependency="database",
            )
        if fault is DatabaseFault.UNSTORABLE_TEXT:
            # hardening: a NUL (or unencodable) character the database refuses is the
            # client's mistake, whichever field or parameter carried it: 422, not 500.
            return problem_response(
                422,
                "Unprocessable Content",
                "The request holds characters the database cannot store (such as NUL).",
                errors=[{"loc": [], "msg": "unstorable character", "type": "value_error"}],
            )
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "Internal Server Error", "An unexpected error occurred.")


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
