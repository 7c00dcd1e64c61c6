"""Realistic sample tasks for demos and benchmarks: the generator (`services.seed` loads them).

Tasks are drawn a block at a time in array operations (numpy): a million cost about a
second of CPU, where drawing them one by one in Python cost about twenty.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from dashboard_api.services.leases import DEFAULT_LEASE_SECONDS, REPORTED_BY_AGENT
from dashboard_api.services.pricing import PriceTable

AGENT_TYPES = ("claude-code", "reviewer", "triage", "docs-writer", "test-fixer", "planner")
AGENT_WEIGHTS = (40, 20, 15, 8, 12, 5)
SOURCES = ("github", "jira", "slack", "dashboard", "api")
SOURCE_WEIGHTS = (45, 20, 15, 15, 5)
MODELS = ("claude-sonnet-4", "claude-opus-4", "claude-haiku-4", "gpt-5", "gpt-5-mini")
MODEL_WEIGHTS = (50, 10, 20, 12, 8)
PROMPTS = (
    "Fix the failing test in {repo} ({n} assertions)",
    "Review pull request #{n} in {repo}",
    "Triage issue #{n}: crash when saving settings",
    "Write docs for the {repo} CLI flags",
    "Upgrade dependencies of {repo} and fix breakages",
    "Plan the migration of {repo} to the new auth service",
    "Answer in Slack: why does the build of {repo} take {n} minutes?",
    "Investigate flaky job #{n} on main of {repo}",
)
REPOS = ("acme/web", "acme/api", "acme/mobile", "acme/infra", "acme/payments", "acme/search")

TASK_COLUMNS = (
    "task_id", "status", "agent_type", "assigned_agent", "source", "input_message", "result",
    "error", "user_id", "conversation_id", "parent_task_id", "flow_id", "model", "cost_micros",
    "cost_reported", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "duration_us", "created_at", "started_at", "completed_at", "updated_at", "first_output_at",
    "cancel_requested", "metadata", "output_seq", "output_bytes", "output_truncated",
    "lease_expires_at", "lease_seconds", "failure_reason",
)  # fmt: skip
EVENT_COLUMNS = ("task_id", "type", "status", "at")


STATUSES = ("queued", "running", "completed", "failed", "cancelled")
_QUEUED, _RUNNING, _COMPLETED, _FAILED, _CANCELLED = range(len(STATUSES))
_S = 1_000_000  # µs
_HOUR = 3600 * _S
_TEN_MINUTES = 600 * _S
_TWO_HOURS = 2 * _HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Creation times are drawn this many at a time.
CHUNK = 32_768

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class _Picker:
    """Codes (indexes into `codes`) picked with these weights by uniform [0, 1) draws."""

    def __init__(self, codes: tuple[int, ...], weights: tuple[int, ...]) -> None:
        total = sum(weights)
        cum = np.array(list(itertools.accumulate(w / total for w in weights)))
        cum[-1] = 1.0
        self._cum = cum
        self._codes = np.array(codes, dtype=np.int64)

    def __call__(self, u: npt.NDArray[np.float64]) -> IntArray:
        index = np.minimum(np.searchsorted(self._cum, u, side="right"), len(self._cum) - 1)
        return self._codes[index]


_STATUS_FRESH = _Picker((_QUEUED, _RUNNING, _COMPLETED, _FAILED), (30, 40, 25, 5))
_STATUS_RECENT = _Picker((_RUNNING, _COMPLETED, _FAILED, _CANCELLED), (5, 80, 12, 3))
_STATUS_OLD = _Picker((_COMPLETED, _FAILED, _CANCELLED), (84, 13, 3))
_AGENT = _Picker(tuple(range(len(AGENT_TYPES))), AGENT_WEIGHTS)
_SOURCE = _Picker(tuple(range(len(SOURCES))), SOURCE_WEIGHTS)
_MODEL = _Picker(tuple(range(len(MODELS))), MODEL_WEIGHTS)
WORKERS = 4  # assigned_agent: "<agent type>-<1..4>"
USERS = 40
FLOWS = 5000
NUMBERS = range(2, 10_000)  # the {n} of a prompt
RESULT = "Done: opened a pull request with the fix."
ERROR = "Agent exceeded its tool-call budget."


def epoch_us(at: datetime) -> int:
    """µs since the Unix epoch (the form the generated rows hold instants in)."""
    return (at - _EPOCH) // _US


def from_epoch_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _created_times(
    n: int, now_us: int, days: int, rng: np.random.Generator, chunk: int
) -> Iterator[IntArray]:
    """`n` creation times (µs) over the last `days` days, oldest first, in sorted arrays.

    Each is `now - span * u ** 1.15` for a uniform u (more work lately), and one in the
    (UTC) afternoon and evening moves 12 hours earlier with probability 0.35 (more work
    during the working day). The u are drawn already sorted, largest first (the order
    statistics of n uniforms: U(n) = V ** (1/n), U(k) = U(k+1) * V ** (1/k), a running
    sum of logarithms), `chunk` at a time, so nothing holds all n; a moved time is at most
    12 hours early, so the times are held back until no later draw can come before them.
    """
    span = days * 86400.0 * _S
    oldest = now_us - int(span)
    half_day = 12 * _HOUR
    log_m = 0.0
    pending = np.empty(0, dtype=np.int64)
    k = n
    while k > 0:
        m = min(chunk, k)
        logs = log_m + np.cumsum(np.log1p(-rng.random(m)) / np.arange(k, k - m, -1.0))
        log_m = float(logs[-1])
        created = now_us - (span * np.exp(1.15 * logs)).astype(np.int64)
        moved = (created // _HOUR - 13) % 24 < 10
        moved &= rng.random(m) < 0.35
        moved &= created - half_day >= oldest
        at = np.where(moved, created - half_day, created)
        k -= m
        pending = np.sort(np.concatenate((pending, at)))
        cut = (
            len(pending)
            if k == 0
            else int(np.searchsorted(pending, created[-1] - half_day, "right"))
        )
        if cut:
            yield pending[:cut]
            pending = pending[cut:]


@dataclass
class TaskBlock:
    """Generated tasks in order of creation, column by column. Instants are µs since the
    Unix epoch; strings are codes into this module's tables (AGENT_TYPES, SOURCES,
    MODELS, PROMPTS, REPOS, NUMBERS, STATUSES); `ids` the task ids' 36 ASCII bytes."""

    created: IntArray
    status: IntArray
    agent: IntArray
    source: IntArray
    model: IntArray
    prompt: IntArray
    repo: IntArray
    number: IntArray  # index into NUMBERS
    ids: npt.NDArray[np.uint8]
    started: IntArray  # where has_started
    has_started: BoolArray
    completed: IntArray  # where ended
    ended: BoolArray
    tokens: IntArray  # (n, 4): input, output, cache read, cache write
    cost: IntArray
    worker: IntArray  # 0..WORKERS-1, where has_started
    user: IntArray  # 0..USERS-1
    flow: IntArray  # 0..FLOWS-1, or -1
    first_output: IntArray  # where has_started
    lease: int  # lease_expires_at of the running ones

    @property
    def n(self) -> int:
        return len(self.created)

    @property
    def timed(self) -> BoolArray:
        """The tasks with a duration (started and ended)."""
        return self.ended & self.has_started

    @property
    def duration(self) -> IntArray:
        return np.where(self.timed, self.completed - self.started, 0)

    @property
    def updated(self) -> IntArray:
        return np.where(
            self.ended, self.completed, np.where(self.has_started, self.started, self.created)
        )

    def rows(self) -> Iterator[tuple[tuple[Any, ...], list[tuple[str, str, int]]]]:
        """(task row, status events) of each task, as `generate` yields them."""
        ids = [b.decode() for b in self.ids.view("S36").ravel().tolist()]
        cols = [
            a.tolist()
            for a in (
                self.created, self.status, self.agent, self.source, self.model, self.prompt,
                self.repo, self.number, self.started, self.has_started, self.completed,
                self.ended, self.cost, self.worker, self.user, self.flow, self.first_output,
                self.duration, self.timed,
            )
        ]  # fmt: skip
        tokens = self.tokens.tolist()
        for task_id, toks, values in zip(ids, tokens, zip(*cols, strict=True), strict=True):
            yield _row(task_id, toks, values, self.lease)


def _row(
    task_id: str, tokens: list[int], values: tuple[Any, ...], lease: int
) -> tuple[tuple[Any, ...], list[tuple[str, str, int]]]:
    (created, status_code, agent, source, model, prompt, repo, number, started, has_started,
     completed, ended, cost, worker, user, flow, first, duration, timed) = values  # fmt: skip
    status = STATUSES[status_code]
    agent_type = AGENT_TYPES[agent]
    events = [(task_id, "queued", created)]
    if has_started:
        events.append((task_id, "running", started))
    if ended:
        events.append((task_id, status, completed))
    running = status_code == _RUNNING
    row: tuple[Any, ...] = (
        task_id, status, agent_type,
        f"{agent_type}-{1 + worker}" if has_started else None,
        SOURCES[source], PROMPTS[prompt].format(repo=REPOS[repo], n=NUMBERS[number]),
        RESULT if status_code == _COMPLETED else None,
        ERROR if status_code == _FAILED else None,
        f"user-{1 + user}", None, None, f"flow-{1 + flow}" if flow >= 0 else None,
        MODELS[model], cost, False, *tokens, duration if timed else None,
        created, started if has_started else None, completed if ended else None,
        completed if ended else started if has_started else created,
        first if has_started else None,
        False, "{}", 0, 0, False,
        lease if running else None,
        DEFAULT_LEASE_SECONDS if running else None,
        REPORTED_BY_AGENT if status_code == _FAILED else None,
    )  # fmt: skip
    return row, events


class _Costs:
    """`PriceTable.cost_micros` in integer arithmetic: every price scaled to an integer
    once, the sum rounded half to even as `Decimal.quantize` does (the same results)."""

    def __init__(self, prices: PriceTable) -> None:
        self._prices = prices
        self._scaled = [_scale(prices.price_for(model)) for model in MODELS]

    def many(self, models: IntArray, tokens: IntArray) -> IntArray:
        """The cost of each task: model codes (into MODELS), token counts (n, 4)."""
        out = np.zeros(len(models), dtype=np.int64)
        most = int(tokens.sum(axis=1).max()) if len(models) else 0
        for code, scaled in enumerate(self._scaled):
            rows = models == code
            if not rows.any():
                continue
            if scaled is None or max(scaled[1:]) * most >= 2**62:
                # Prices with too many decimals (or sums past int64): as the service does.
                out[rows] = [self._one(MODELS[code], t) for t in tokens[rows].tolist()]
                continue
            unit, *weights = scaled
            total = tokens[rows] @ np.array(weights, dtype=np.int64)
            q, r = np.divmod(total, unit)
            q += (2 * r > unit) | ((2 * r == unit) & (q % 2 == 1))
            out[rows] = q
        return out

    def _one(self, model: str, tokens: list[int]) -> int:
        inp, out, read, write = tokens
        return self._prices.cost_micros(
            model,
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=read,
            cache_write_tokens=write,
        )


def _scale(price: Any) -> tuple[int, int, int, int, int] | None:
    values = (price.input, price.output, price.cache_read, price.cache_write)
    places = max(max(0, -int(v.as_tuple().exponent)) for v in values)
    if places > 12 or any(v < 0 for v in values):
        return None
    unit = 10**places
    a, b, c, d = (int(v * unit) for v in values)
    return unit, a, b, c, d


def _uuid7(created_us: IntArray, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """UUIDv7 strings of the creation times (as the service makes ids at registration),
    as rows of 36 ASCII bytes."""
    n = len(created_us)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    ms = (created_us // 1000).astype(np.uint64)
    tail = rng.integers(0, 1 << 62, n, dtype=np.uint64) | np.uint64(1 << 63)
    rand12 = rng.integers(0, 1 << 12, n, dtype=np.uint64)
    spots = (*range(8), *range(9, 13))
    for j, col in enumerate(spots):
        out[:, col] = _HEX[(ms >> np.uint64(4 * (11 - j))) & np.uint64(15)]
    out[:, 14] = ord("7")
    for j, col in enumerate(range(15, 18)):
        out[:, col] = _HEX[(rand12 >> np.uint64(4 * (2 - j))) & np.uint64(15)]
    for j, col in enumerate((*range(19, 23), *range(24, 36))):
        out[:, col] = _HEX[(tail >> np.uint64(4 * (15 - j))) & np.uint64(15)]
    return out


def _tasks(created: IntArray, now_us: int, rng: np.random.Generator, costs: _Costs) -> TaskBlock:
    n = len(created)
    rand = rng.random
    age = now_us - created
    status = np.where(
        age < _TEN_MINUTES,
        _STATUS_FRESH(rand(n)),
        np.where(age < _TWO_HOURS, _STATUS_RECENT(rand(n)), _STATUS_OLD(rand(n))),
    )
    model = _MODEL(rand(n))
    wait = np.minimum(rng.exponential(8.0, n), 600.0)
    started = np.minimum(created + (wait * _S).astype(np.int64), now_us)
    has_started = (status != _QUEUED) & ((status != _CANCELLED) | (rand(n) < 0.5))
    tokens = np.empty((n, 4), dtype=np.int64)
    tokens[:, 0] = np.exp(rng.normal(9.5, 1.0, n)).astype(np.int64)
    tokens[:, 1] = np.exp(rng.normal(7.5, 1.0, n)).astype(np.int64)
    tokens[:, 2] = (tokens[:, 0] * 3 * rand(n)).astype(np.int64)
    tokens[:, 3] = (tokens[:, 0] * 0.3 * rand(n)).astype(np.int64)
    tokens[~has_started] = 0
    ended = status >= _COMPLETED
    base = np.where(has_started, started, created)
    run = np.minimum(np.exp(rng.normal(5.0, 1.1, n)), 7200.0)
    completed = np.minimum(base + (run * _S).astype(np.int64), now_us)
    flow = (rand(n) * FLOWS).astype(np.int64)
    return TaskBlock(
        created=created,
        status=status,
        agent=_AGENT(rand(n)),
        source=_SOURCE(rand(n)),
        model=model,
        prompt=(rand(n) * len(PROMPTS)).astype(np.int64),
        repo=(rand(n) * len(REPOS)).astype(np.int64),
        number=(rand(n) * len(NUMBERS)).astype(np.int64),
        ids=_uuid7(created, rng),
        started=started,
        has_started=has_started,
        completed=completed,
        ended=ended,
        tokens=tokens,
        cost=costs.many(model, tokens),
        worker=(rand(n) * WORKERS).astype(np.int64),
        user=(rand(n) * USERS).astype(np.int64),
        flow=np.where(rand(n) < 0.3, flow, -1),
        first_output=started + ((0.3 + 5.7 * rand(n)) * _S).astype(np.int64),
        lease=now_us + DEFAULT_LEASE_SECONDS * _S,
    )


def blocks(
    n: int,
    *,
    now: datetime,
    days: int,
    prices: PriceTable,
    seed: int | None = None,
    chunk: int = CHUNK,
) -> Iterator[TaskBlock]:
    """`n` tasks spread over the last `days` days, in order of creation (as a live
    system writes them, which keeps the time-ordered indexes and the table's pages in
    time order), about `chunk` at a time."""
    rng = np.random.default_rng(seed)
    costs = _Costs(prices)
    now_us = epoch_us(now)
    for created in _created_times(n, now_us, days, rng, chunk):
        yield _tasks(created, now_us, rng, costs)


def generate(
    n: int, *, now: datetime, days: int, prices: PriceTable, seed: int | None = None
) -> Iterator[tuple[tuple[Any, ...], list[tuple[str, str, int]]]]:
    """Yield (task row, status events) for `n` tasks, in order of creation (`blocks`).

    A task row holds TASK_COLUMNS' values with every instant as µs since the Unix epoch
    and the metadata as JSON text; an event is (task_id, status, at µs)."""
    for block in blocks(n, now=now, days=days, prices=prices, seed=seed):
        yield from block.rows()
