"""Server-made identifiers: time-ordered UUIDv7 strings."""

from __future__ import annotations

import re

from uuid6 import uuid7

# Producer-given task ids: 1-255 chars of this alphabet (docs/api.md §1).
TASK_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,255}$"
TASK_ID_RE = re.compile(TASK_ID_PATTERN)
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def new_id() -> str:
    """A new UUIDv7 as a string; lexical order follows creation time."""
    return str(uuid7())
