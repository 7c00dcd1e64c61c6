"""SQLite rows of generated tasks (`seed_data.TaskBlock`) in the driver's storage form.

The counterpart of `seed_copy` (PostgreSQL's COPY rows): tuples for the driver's
executemany, each column made in array operations and the rows zipped from the columns,
holding what SQLAlchemy would have bound for the rows `TaskBlock.rows` yields: instants
as naive UTC text in the fixed format of `UTCDateTime` ('YYYY-MM-DD HH:MM:SS.ffffff'),
booleans as 0/1, the metadata as JSON text. tests/analytics/test_seed_rollups.py checks
them against the rows stored through SQLAlchemy.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from dashboard_api.services.leases import DEFAULT_LEASE_SECONDS, REPORTED_BY_AGENT
from dashboard_api.services.seed_data import (
    AGENT_TYPES,
    ERROR,
    FLOWS,
    MODELS,
    NUMBERS,
    PROMPTS,
    REPOS,
    RESULT,
    SOURCES,
    STATUSES,
    USERS,
    WORKERS,
    TaskBlock,
)

Objects = npt.NDArray[np.object_]

_STATUS = np.array(STATUSES, dtype=object)
_RUNNING = STATUSES.index("running")
_COMPLETED = STATUSES.index("completed")
_FAILED = STATUSES.index("failed")
_AGENT = np.array(AGENT_TYPES, dtype=object)
_SOURCE = np.array(SOURCES, dtype=object)
_MODEL = np.array(MODELS, dtype=object)
_WORKER = np.array([[f"{a}-{1 + w}" for w in range(WORKERS)] for a in AGENT_TYPES], dtype=object)
_USER = np.array([f"user-{1 + u}" for u in range(USERS)], dtype=object)
_FLOW = np.array([*(f"flow-{1 + f}" for f in range(FLOWS)), None], dtype=object)  # -1: none
_TEXT_LENGTH = len("YYYY-MM-DD HH:MM:SS.ffffff")


def instants(us: npt.NDArray[np.int64]) -> Objects:
    """µs since the Unix epoch as stored text, 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    iso = np.datetime_as_string(us.astype("datetime64[us]"), unit="us").astype(f"S{_TEXT_LENGTH}")
    raw = iso.view(np.uint8).reshape(len(us), _TEXT_LENGTH)
    raw[:, 10] = ord(" ")  # 'T'
    return raw.view(f"S{_TEXT_LENGTH}").ravel().astype(f"U{_TEXT_LENGTH}").astype(object)


def _where(mask: npt.NDArray[np.bool_], values: Any) -> Objects:
    """`values` where `mask`, else None (NULL)."""
    out = np.full(len(mask), None, dtype=object)
    out[mask] = values[mask] if isinstance(values, np.ndarray) else values
    return out


def _instants_where(mask: npt.NDArray[np.bool_], us: npt.NDArray[np.int64]) -> Objects:
    """`instants(us)` where `mask`, else None (the others' values are not instants)."""
    out = np.full(len(mask), None, dtype=object)
    out[mask] = instants(us[mask])
    return out


def task_rows(block: TaskBlock) -> list[tuple[Any, ...]]:
    """The block's task rows, TASK_COLUMNS' values in order."""
    status = block.status
    started, ended = block.has_started, block.ended
    running = status == _RUNNING
    timed = block.timed
    prompts = [
        PROMPTS[p].format(repo=REPOS[r], n=NUMBERS[k])
        for p, r, k in zip(
            block.prompt.tolist(), block.repo.tolist(), block.number.tolist(), strict=True
        )
    ]
    tokens = block.tokens
    columns: list[Any] = [
        block.ids.view("S36").ravel().astype("U36").tolist(),
        _STATUS[status],
        _AGENT[block.agent],
        _where(started, _WORKER[block.agent, block.worker]),
        _SOURCE[block.source],
        prompts,
        _where(status == _COMPLETED, RESULT),
        _where(status == _FAILED, ERROR),
        _USER[block.user],
        repeat(None),  # conversation_id
        repeat(None),  # parent_task_id
        _FLOW[block.flow],
        _MODEL[block.model],
        block.cost.tolist(),
        repeat(0),  # cost_reported
        *(tokens[:, i].tolist() for i in range(4)),
        _where(timed, block.duration.astype(object)),
        instants(block.created),
        _instants_where(started, block.started),
        _instants_where(ended, block.completed),
        instants(block.updated),
        _instants_where(started, block.first_output),
        repeat(0),  # cancel_requested
        repeat("{}"),  # metadata
        repeat(0),  # output_seq
        repeat(0),  # output_bytes
        repeat(0),  # output_truncated
        _instants_where(running, np.full(block.n, block.lease, dtype=np.int64)),
        _where(running, DEFAULT_LEASE_SECONDS),
        _where(status == _FAILED, REPORTED_BY_AGENT),
    ]
    return list(
        zip(*(c.tolist() if isinstance(c, np.ndarray) else c for c in columns), strict=False)
    )


def event_rows(block: TaskBlock) -> list[tuple[Any, ...]]:
    """The block's status events (EVENT_COLUMNS), each task's in order (queued, running,
    the end), the tasks in order: the event ids a task-by-task insert would give."""
    n = block.n
    ids = np.repeat(block.ids.view("S36").ravel().astype("U36").astype(object), 3)
    status = np.empty((n, 3), dtype=object)
    status[:, 0] = "queued"
    status[:, 1] = "running"
    status[:, 2] = _STATUS[block.status]
    at = np.stack((block.created, block.started, block.completed), axis=1).ravel()
    kept = np.stack((np.ones(n, dtype=bool), block.has_started, block.ended), axis=1).ravel()
    return list(
        zip(
            ids[kept].tolist(),
            repeat("status"),
            status.ravel()[kept].tolist(),
            instants(at[kept]).tolist(),
            strict=False,  # "status" repeats
        )
    )
