"""The one line a CLI user sees for an expected failure (bad setting, unreachable database).

A traceback is for a bug in the service; a wrong environment variable, a database that is
down or a file that cannot be created is the user's to fix, so the CLI names the cause and
what to do in one line on stderr and exits 1. Anything not recognised here is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os

from pydantic import ValidationError

_DATABASE_ENV = "DASHBOARD_DATABASE_URL"


class CliFailure(Exception):
    """A failure the CLI has already put in words; its message is the line shown."""


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _database_label() -> str:
    """The database the settings point at, without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from dashboard_api.settings import Settings

    raw = os.environ.get(_DATABASE_ENV) or str(Settings.model_fields["database_url"].default)
    try:
        return make_url(raw).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(raw)


def _settings_line(exc: ValidationError) -> str:
    # The input is left out on purpose: the failing value may be a secret.
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"DASHBOARD_{name}: {message}")
    return "invalid setting " + "; ".join(problems)


def expected_error_line(exc: BaseException) -> str | None:
    """The one line explaining `exc`, or None when it is not an expected failure."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import ArgumentError, DBAPIError

    if isinstance(exc, CliFailure):
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return _settings_line(exc)
    if isinstance(exc, ArgumentError):
        return f"{_DATABASE_ENV} is not a database URL ({_first_line(str(exc))})"
    if isinstance(exc, CommandError):
        hint = ""
        if "Can't locate revision" in str(exc):
            hint = " (the database was migrated by a newer version of the service)"
        return f"migrating {_database_label()} failed: {_first_line(str(exc))}{hint}"
    if isinstance(exc, DBAPIError):
        cause = exc.orig if exc.orig is not None else exc
        reason = _first_line(str(cause)) or type(cause).__name__
        return f"cannot use the database {_database_label()}: {reason}"
    if isinstance(exc, OSError):
        # asyncpg raises the socket's error itself (connection refused, unknown host).
        reason = exc.strerror or _first_line(str(exc)) or type(exc).__name__
        return f"cannot reach the database {_database_label()}: {reason}"
    return None
