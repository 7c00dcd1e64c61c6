"""PostgreSQL's one-statement append of task output (see `base.OutputAppend`)."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table, TextualSelect, text

from dashboard_api.task_statuses import TERMINAL_STATUSES

_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


@functools.lru_cache(maxsize=8)
def append_statement(
    tasks: Table, chunks: Table, returning: tuple[Any, ...], members: Table | None
) -> TextualSelect:
    """UPDATE the task row (taking its lock, moving its counters, renewing a lease less
    than half left) and INSERT the chunks numbered from its new seq, in one statement;
    built once per shape (values bound at execution)."""
    names = ", ".join(c.name for c in returning)
    only_alone = (
        ""
        if members is None
        else f"""
          AND conversation_id IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM {members.name} m WHERE m.task_id = {tasks.name}.task_id)"""  # noqa: S608
    )
    # Interpolated: table and column names and status literals of our own, no input. A
    # membership is checked on the row the UPDATE locks (the newest version when it
    # waited), so a task linked to a conversation meanwhile goes the long way.
    sql = f"""
    WITH t AS (
        UPDATE {tasks.name}
        SET output_seq = output_seq + CAST(:n AS integer),
            output_bytes = output_bytes + CAST(:size AS bigint),
            updated_at = CAST(:now AS timestamptz),
            lease_expires_at = CASE
                WHEN status = 'running' AND lease_expires_at
                    < CAST(:now AS timestamptz) + lease_seconds * interval '0.5 second'
                THEN CAST(:now AS timestamptz) + lease_seconds * interval '1 second'
                ELSE lease_expires_at END
        WHERE task_id = CAST(:task_id AS varchar)
          AND status NOT IN ({_TERMINAL_SQL})
          AND NOT output_truncated
          AND first_output_at IS NOT NULL
          AND output_bytes + CAST(:size AS bigint) <= CAST(:cap AS bigint){only_alone}
        RETURNING {names}
    ), c AS (
        INSERT INTO {chunks.name} (task_id, seq, stream, content, created_at)
        SELECT CAST(:task_id AS varchar), t.output_seq - CAST(:n AS integer) + u.ord,
               u.stream, u.content, CAST(:now AS timestamptz)
        FROM t, unnest(CAST(:streams AS varchar[]), CAST(:contents AS text[]))
            WITH ORDINALITY AS u(stream, content, ord)
    )
    SELECT {names} FROM t
    """  # noqa: S608
    return text(sql).columns(*returning)
