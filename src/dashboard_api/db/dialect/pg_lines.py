"""PostgreSQL writes export lines and list items itself: one text value per row, the bytes
the service's Python writers (services/task_export.py: the csv module, orjson; a task
list page's items, orjson) would write for it.

Each field is written by kind (`LineField`): text, integers, millionths written as the
float they divide to (`micros / 1_000_000` as Python's `repr` writes it for CSV, as
orjson does for JSON), instants (`schemas.tasks_json.ts`), flags and two-label choices.
CSV quotes a field that holds a comma, a quote, CR or LF (doubling its quotes) and
writes null and the empty string alike, as the csv module does; JSON strings come from
`to_json`, whose escapes are orjson's (short forms for \\b \\t \\n \\f \\r, `\\u00XX`
for the other control characters, everything else as is). tests/lifecycle/
test_export_lines.py and tests/tasks/test_lean_reads.py check the writers byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import BigInteger, ColumnElement, Numeric, Text, case, cast, func, literal_column
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

from dashboard_api.db.dialect.base import ExportFormat, LineField

_MILLION = 1_000_000
# Below this a count of millionths has at most 15 significant digits: its quotient is
# written exactly by integer arithmetic (the shortest repr of the nearest double is the
# decimal itself). At and above, PostgreSQL's float8 text (also the shortest repr).
_EXACT_BELOW = 10**15


def _lit(text: str) -> ColumnElement[str]:
    """A text constant written into the statement (no bind parameter per row part)."""
    return literal_column("'" + text.replace("'", "''") + "'", Text)


def _n(n: int) -> ColumnElement[int]:
    """An integer constant written into the statement."""
    return literal_column(str(n), BigInteger)


def _text(v: ColumnElement[Any]) -> ColumnElement[str]:
    return cast(v, Text)


def _fixed(a: ColumnElement[int]) -> ColumnElement[str]:
    """a / 10**6 (a >= 0) in fixed notation with at least one fraction digit."""
    frac = a % _n(_MILLION)
    digits = case(
        (frac == _n(0), _lit("0")),
        else_=func.rtrim(func.lpad(_text(frac), _n(6), _lit("0")), _lit("0")),
    )
    exact = _text(a // _n(_MILLION)) + _lit(".") + digits
    as_float = _text(cast(cast(a, Numeric) / cast(_n(_MILLION), Numeric), DOUBLE_PRECISION))
    approx = func.regexp_replace(as_float, _lit("^([0-9]+)$"), _lit("\\1.0"))
    return case((a < _n(_EXACT_BELOW), exact), else_=approx)


_YEAR_1000: ColumnElement[Any] = literal_column("'1000-01-01T00:00:00Z'::timestamptz")


def _micros(m: ColumnElement[int], fmt: ExportFormat) -> ColumnElement[str]:
    """`m / 1_000_000` as the Python writer writes the float: `repr` (CSV), orjson (JSON).
    Both write fixed notation from 1e-4 (repr) or 1e-5 (orjson) on; below, repr writes
    `1.5e-05`, orjson `0.000015` and only single digits as `1e-6`."""
    a = func.abs(m)
    sign = case((m < _n(0), _lit("-")), else_=_lit(""))
    small: ColumnElement[str]
    if fmt == "csv":
        small = case(
            (a % _n(10) == _n(0), _text(a // _n(10)) + _lit("e-05")),
            (a < _n(10), _text(a) + _lit("e-06")),
            else_=_text(a // _n(10)) + _lit(".") + _text(a % _n(10)) + _lit("e-05"),
        )
        small_below = 100
    else:
        small = _text(a) + _lit("e-6")
        small_below = 10
    body = case(((a > _n(0)) & (a < _n(small_below)), small), else_=_fixed(a))
    return sign + body


def _instant(v: ColumnElement[Any]) -> ColumnElement[str]:
    """`ts`: milliseconds (truncated), UTC, `Z`; a year before 1000 unpadded (strftime)."""
    utc = func.timezone(_lit("UTC"), v)
    rest = '-MM-DD"T"HH24:MI:SS.MS"Z"'
    return case(
        (v < _YEAR_1000, func.to_char(utc, _lit("FMYYYY" + rest))),
        else_=func.to_char(utc, _lit("YYYY" + rest)),
    )


def _value(field: LineField, fmt: ExportFormat) -> ColumnElement[str]:
    """The field's text before CSV quoting or JSON encoding (NULL for null)."""
    v = field.column
    if field.kind == "micros":
        return _micros(v, fmt)
    if field.kind == "instant":
        return _instant(v)
    if field.kind == "flag":
        return case((v, _lit("true")), else_=_lit("false"))
    if field.kind == "label":
        assert field.labels is not None
        return case((v, _lit(field.labels[0])), else_=_lit(field.labels[1]))
    return _text(v)


def _csv_field(field: LineField) -> ColumnElement[str]:
    value = _value(field, "csv")
    if field.kind in ("text", "label"):
        quoted = _lit('"') + func.replace(value, _lit('"'), _lit('""')) + _lit('"')
        return case((value.op("~")(_lit('[",\r\n]')), quoted), else_=func.coalesce(value, _lit("")))
    return func.coalesce(value, _lit(""))


def _json_field(field: LineField) -> ColumnElement[str]:
    value = _value(field, "jsonl")
    if field.kind in ("text", "label", "instant"):
        value = _text(func.to_json(value))
    return func.coalesce(value, _lit("null"))


def export_line(fields: Sequence[LineField], fmt: ExportFormat) -> ColumnElement[str]:
    """One row as a CSV line (CRLF) or a JSON object line (LF), in `fields` order."""
    if fmt == "jsonl":
        return json_object(fields) + _lit("\n")
    parts: list[ColumnElement[str]] = []
    for i, field in enumerate(fields):
        if i:
            parts.append(_lit(","))
        parts.append(_csv_field(field))
    parts.append(_lit("\r\n"))
    return _joined(parts)


def json_object(fields: Sequence[LineField]) -> ColumnElement[str]:
    """One row as the JSON object orjson writes for its document, in `fields` order."""
    parts: list[ColumnElement[str]] = []
    for i, field in enumerate(fields):
        key = orjson.dumps(field.name).decode()
        parts.append(_lit(("{" if i == 0 else ",") + key + ":"))
        parts.append(_json_field(field))
    parts.append(_lit("}"))
    return _joined(parts)


def _joined(parts: Sequence[ColumnElement[str]]) -> ColumnElement[str]:
    line = parts[0]
    for part in parts[1:]:
        line = line + part
    return line
