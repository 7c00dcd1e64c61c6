"""Values the dialects' statements take or give, the same on every backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson


def escape_like(needle: str) -> str:
    """Make `%`, `_` and the escape character literal in a LIKE pattern."""
    return needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def int_list(value: Any) -> list[int]:
    """The list an `int_list_agg` gave (an array on PostgreSQL, JSON text on SQLite)."""
    if isinstance(value, str):
        out: list[int] = orjson.loads(value)
        return out
    return list(value)


def bytes_list(value: Any) -> list[bytes]:
    """The list a `bytes_list_agg` gave (an array on PostgreSQL, JSON of hex on SQLite)."""
    if isinstance(value, str):
        return [bytes.fromhex(x) for x in orjson.loads(value)]
    return list(value)


def int_rows(value: str | None) -> list[list[int]]:
    """The rows an `int_rows_agg` gave (NULL for no rows)."""
    if not value:
        return []
    return [[int(x) for x in row.split(":")] for row in value.split(",")]


def int_pairs_params(name: str, pairs: Sequence[tuple[int, int]]) -> dict[str, list[int]]:
    """The parameters of `in_int_pairs(..., name)` for these pairs."""
    return {f"{name}_a": [a for a, _ in pairs], f"{name}_b": [b for _, b in pairs]}
