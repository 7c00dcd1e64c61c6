"""Structured logs (structlog): JSON off a terminal, request ids, and secrets redacted.

Every record goes through one handler on the root logger, the standard library's
(uvicorn's, SQLAlchemy's, our modules' `logging.getLogger`) as well as structlog's, so
that every line has the same shape, carries the request id of the request that produced
it, and passes through `redact` — tokens never reach a log, whatever logged them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from dashboard_api.settings import Settings

# Keys whose values are never logged, wherever they appear (dict keys, headers, fields).
_SECRET_KEYS = re.compile(
    r"(authorization|token|secret|password|passwd|api[_-]?key|cookie|signature|credential)",
    re.IGNORECASE,
)
_REDACTED = "[REDACTED]"
# Values that look like credentials inside free text (messages, URLs, exceptions).
_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + _REDACTED),
    (
        re.compile(
            r"(?i)([?&;](?:access_)?(?:token|secret|password|api_key|key|sig|signature)=)[^&\s\"']*"
        ),
        r"\1" + _REDACTED,
    ),
    (re.compile(r"\bdash_[A-Za-z0-9_-]{8,}"), "dash_" + _REDACTED),
    (re.compile(r"(?i)(://[^:/@\s]+:)[^@\s]+@"), r"\1" + _REDACTED + "@"),  # URL passwords
)
_HANDLER_NAME = "dashboard-api"


def redact_text(text: str) -> str:
    """Mask bearer tokens, token-like query values, our token format and URL passwords."""
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(key: str | None, value: Any) -> Any:
    """A value safe to log: secrets by key are masked, text is scrubbed, containers walked."""
    # Only text can be a credential: counts such as `output_tokens` stay readable.
    if key is not None and isinstance(value, str | bytes) and value and _SECRET_KEYS.search(key):
        return _REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(None, v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: applies `redact_value` to every field of the event."""
    event_dict.pop("color_message", None)  # uvicorn's ANSI duplicate of the message
    for key in list(event_dict):
        if key == "exception" and isinstance(event_dict[key], str):
            event_dict[key] = redact_text(event_dict[key])
            continue
        event_dict[key] = redact_value(key if key != "event" else None, event_dict[key])
    return event_dict


def use_json(settings: Settings) -> bool:
    """JSON unless stderr is a terminal (or the setting forces one or the other)."""
    if settings.log_json is not None:
        return settings.log_json
    return not sys.stderr.isatty()


def configure_logging(settings: Settings) -> None:
    """Install the one root handler (idempotent: building another app replaces it)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json(settings)
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    level = logging.getLevelName(settings.log_level.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    # uvicorn's access lines carry raw query strings (tokens): ours replace them.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
