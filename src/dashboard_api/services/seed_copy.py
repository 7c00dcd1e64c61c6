"""Binary COPY data of generated tasks (`seed_data.TaskBlock`) and their status events,
a block at a time (`db.pgcopy`), in TASK_COLUMNS and EVENT_COLUMNS order."""

from __future__ import annotations

import string

import numpy as np

from dashboard_api.db import pgcopy
from dashboard_api.services.leases import DEFAULT_LEASE_SECONDS, REPORTED_BY_AGENT
from dashboard_api.services.seed_data import (
    AGENT_TYPES,
    ERROR,
    EVENT_COLUMNS,
    FLOWS,
    MODELS,
    NUMBERS,
    PROMPTS,
    REPOS,
    RESULT,
    SOURCES,
    STATUSES,
    TASK_COLUMNS,
    USERS,
    WORKERS,
    TaskBlock,
)

_STATUS = pgcopy.Strings(STATUSES)
_AGENT = pgcopy.Strings(AGENT_TYPES)
_SOURCE = pgcopy.Strings(SOURCES)
_MODEL = pgcopy.Strings(MODELS)
_USER = pgcopy.Strings([f"user-{1 + i}" for i in range(USERS)])
_FLOW = pgcopy.Strings([*(f"flow-{1 + i}" for i in range(FLOWS)), None])  # -1: NULL
# assigned_agent: code agent * WORKERS + worker; the last one NULL (not started).
_ASSIGNED = pgcopy.Strings([*(f"{a}-{1 + w}" for a in AGENT_TYPES for w in range(WORKERS)), None])
_RESULT = pgcopy.Strings([None, RESULT])
_ERROR = pgcopy.Strings([None, ERROR])
_REASON = pgcopy.Strings([None, REPORTED_BY_AGENT])


def _prompt_parts() -> tuple[pgcopy.Strings, list[np.ndarray], int, int]:
    """The prompts' pieces: every literal, then the repos, then the numbers; per piece
    slot, per template, the literal's code or -1 (the repo) or -2 (the number)."""
    pieces: list[str] = [""]
    layout: list[list[int]] = []
    for template in PROMPTS:
        slots: list[int] = []
        for literal, name, _, _ in string.Formatter().parse(template):
            pieces.append(literal)
            slots.append(len(pieces) - 1)
            if name is not None:
                slots.append(-1 if name == "repo" else -2)
        layout.append(slots)
    width = max(len(s) for s in layout)
    slots_of = [np.array([s[j] if j < len(s) else 0 for s in layout]) for j in range(width)]
    repo_base = len(pieces)
    pieces += REPOS
    number_base = len(pieces)
    pieces += [str(n) for n in NUMBERS]
    return pgcopy.Strings(pieces), slots_of, repo_base, number_base


_PIECES, _SLOTS, _REPO_BASE, _NUMBER_BASE = _prompt_parts()
assert TASK_COLUMNS[:6] == (
    "task_id", "status", "agent_type", "assigned_agent", "source", "input_message",
)  # fmt: skip
assert EVENT_COLUMNS == ("task_id", "type", "status", "at")


def task_rows(block: TaskBlock) -> bytes:
    """The tasks' rows (without the COPY header and trailer)."""
    n = block.n
    rows = pgcopy.Rows(n, len(TASK_COLUMNS))
    started, ended, status = block.has_started, block.ended, block.status
    running = status == STATUSES.index("running")
    rows.fixed(block.ids)
    rows.strings(_STATUS, status)
    rows.strings(_AGENT, block.agent)
    rows.strings(_ASSIGNED, np.where(started, block.agent * WORKERS + block.worker, -1))
    rows.strings(_SOURCE, block.source)
    rows.concat([(_PIECES, _prompt_slot(block, slot)) for slot in _SLOTS])
    rows.strings(_RESULT, (status == STATUSES.index("completed")).astype(np.int64))
    failed = (status == STATUSES.index("failed")).astype(np.int64)
    rows.strings(_ERROR, failed)
    rows.strings(_USER, block.user)
    rows.null()  # conversation_id
    rows.null()  # parent_task_id
    rows.strings(_FLOW, block.flow)
    rows.strings(_MODEL, block.model)
    rows.ints([block.cost], 8)
    rows.constant(b"\x00")  # cost_reported
    rows.ints([block.tokens[:, i] for i in range(4)], 8)
    rows.nullable_int(block.duration, ~block.timed, 8)
    rows.timestamps(block.created)
    rows.timestamps(block.started, ~started)
    rows.timestamps(block.completed, ~ended)
    rows.timestamps(block.updated)
    rows.timestamps(block.first_output, ~started)
    rows.constant(b"\x00")  # cancel_requested
    rows.constant(b"\x01{}")  # metadata: jsonb version 1, then its text
    rows.ints([np.zeros(n, dtype=np.int64)], 4)  # output_seq
    rows.ints([np.zeros(n, dtype=np.int64)], 8)  # output_bytes
    rows.constant(b"\x00")  # output_truncated
    rows.timestamps(np.full(n, block.lease, dtype=np.int64), ~running)
    rows.nullable_int(np.full(n, DEFAULT_LEASE_SECONDS, dtype=np.int64), ~running, 4)
    rows.strings(_REASON, failed)
    return rows.data()


def _prompt_slot(block: TaskBlock, slot: np.ndarray) -> np.ndarray:
    code = slot[block.prompt]
    return np.where(
        code == -1, _REPO_BASE + block.repo, np.where(code == -2, _NUMBER_BASE + block.number, code)
    )


def event_rows(block: TaskBlock) -> bytes:
    """The status events' rows: each task's queued, running (when started) and end
    (when ended) in turn, task after task."""
    has = np.stack((np.ones(block.n, dtype=bool), block.has_started, block.ended), axis=1)
    task, which = np.nonzero(has)
    at = np.stack((block.created, block.started, block.completed), axis=1)[task, which]
    status = np.where(which == 0, 0, np.where(which == 1, 1, block.status[task]))
    rows = pgcopy.Rows(len(task), len(EVENT_COLUMNS))
    rows.fixed(block.ids, task)
    rows.constant(b"status")
    rows.strings(_STATUS, status)
    rows.timestamps(at)
    return rows.data()
