"""Realistic sample tasks for demos and benchmarks: the generator (`services.seed` loads them)."""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

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


def _picker(values: tuple[str, ...], weights: tuple[int, ...]) -> Any:
    """A function of one uniform [0, 1) draw that picks a value with these weights."""
    total = sum(weights)
    cum = list(itertools.accumulate(w / total for w in weights))
    cum[-1] = 1.0
    last = len(values) - 1

    def pick(u: float) -> str:
        return values[min(bisect.bisect_right(cum, u), last)]

    return pick


_STATUS_FRESH = _picker(("queued", "running", "completed", "failed"), (30, 40, 25, 5))
_STATUS_RECENT = _picker(("running", "completed", "failed", "cancelled"), (5, 80, 12, 3))
_STATUS_OLD = _picker(("completed", "failed", "cancelled"), (84, 13, 3))
_AGENT = _picker(AGENT_TYPES, AGENT_WEIGHTS)
_SOURCE = _picker(SOURCES, SOURCE_WEIGHTS)
_MODEL = _picker(MODELS, MODEL_WEIGHTS)
_S = 1_000_000  # µs
_HOUR = 3600 * _S
_TEN_MINUTES = 600 * _S
_TWO_HOURS = 2 * _HOUR
_ENDED = frozenset(("completed", "failed", "cancelled"))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def epoch_us(at: datetime) -> int:
    """µs since the Unix epoch (the form the generated rows hold instants in)."""
    return (at - _EPOCH) // _US


def from_epoch_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _created_times(n: int, now_us: int, days: int, rng: random.Random) -> Iterator[int]:
    """`n` creation times (µs) over the last `days` days, oldest first, streamed.

    Each is `now - span * u ** 1.15` for a uniform u (more work lately), and one in the
    (UTC) afternoon and evening moves 12 hours earlier with probability 0.35 (more work
    during the working day). The u are drawn already sorted, largest first (the order
    statistics of n uniforms: U(n) = V ** (1/n), U(k) = U(k+1) * V ** (1/k)), so nothing
    holds all n; a moved time is at most 12 hours early, so a heap of the last 12 hours
    puts them back in order.
    """
    span = days * 86400.0 * _S
    oldest = now_us - int(span)
    half_day = 12 * _HOUR
    heap: list[int] = []
    rand = rng.random
    m = 1.0
    for k in range(n, 0, -1):
        m *= (1.0 - rand()) ** (1.0 / k)
        created = now_us - int(span * m**1.15)
        at = created
        if (created // _HOUR - 13) % 24 < 10 and rand() < 0.35 and created - half_day >= oldest:
            at = created - half_day
        heapq.heappush(heap, at)
        while heap and heap[0] <= created - half_day:
            yield heapq.heappop(heap)
    while heap:
        yield heapq.heappop(heap)


def _uuid7(created_us: int, rng: random.Random) -> str:
    """A UUIDv7 string of the creation time (as the service makes ids at registration)."""
    ms = f"{created_us // 1000:012x}"
    tail = f"{(0b10 << 62) | rng.getrandbits(62):016x}"
    return f"{ms[:8]}-{ms[8:]}-7{rng.getrandbits(12):03x}-{tail[:4]}-{tail[4:]}"


class _Costs:
    """`PriceTable.cost_micros` in integer arithmetic: every price scaled to an integer
    once, the sum rounded half to even as `Decimal.quantize` does (the same results)."""

    def __init__(self, prices: PriceTable) -> None:
        self._prices = prices
        self._scaled: dict[str, tuple[int, int, int, int, int] | None] = {}

    def __call__(self, model: str, inp: int, out: int, read: int, write: int) -> int:
        try:
            scaled = self._scaled[model]
        except KeyError:
            scaled = self._scaled[model] = _scale(self._prices.price_for(model))
        if scaled is None:  # prices with too many decimals: as the service computes it
            return self._prices.cost_micros(
                model,
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=read,
                cache_write_tokens=write,
            )
        unit, a, b, c, d = scaled
        q, r = divmod(a * inp + b * out + c * read + d * write, unit)
        if 2 * r > unit or (2 * r == unit and q & 1):
            q += 1
        return q


def _scale(price: Any) -> tuple[int, int, int, int, int] | None:
    values = (price.input, price.output, price.cache_read, price.cache_write)
    places = max(max(0, -int(v.as_tuple().exponent)) for v in values)
    if places > 12 or any(v < 0 for v in values):
        return None
    unit = 10**places
    a, b, c, d = (int(v * unit) for v in values)
    return unit, a, b, c, d


def generate(
    n: int, *, now: datetime, days: int, prices: PriceTable, seed: int | None = None
) -> Iterator[tuple[tuple[Any, ...], list[tuple[str, str, int]]]]:
    """Yield (task row, status events) for `n` tasks spread over the last `days` days,
    in order of creation (as a live system writes them, which keeps the time-ordered
    indexes and the table's pages in time order).

    A task row holds TASK_COLUMNS' values with every instant as µs since the Unix epoch
    and the metadata as JSON text; an event is (task_id, status, at µs)."""
    rng = random.Random(seed)
    rand = rng.random
    gauss = rng.gauss
    expovariate = rng.expovariate
    exp = math.exp
    cost_of = _Costs(prices)
    now_us = epoch_us(now)
    lease = now_us + DEFAULT_LEASE_SECONDS * _S
    n_prompts, n_repos = len(PROMPTS), len(REPOS)
    for created in _created_times(n, now_us, days, rng):
        age = now_us - created
        if age < _TEN_MINUTES:
            status = _STATUS_FRESH(rand())
        elif age < _TWO_HOURS:
            status = _STATUS_RECENT(rand())
        else:
            status = _STATUS_OLD(rand())
        agent_type = _AGENT(rand())
        source = _SOURCE(rand())
        model = _MODEL(rand())
        prompt = PROMPTS[int(rand() * n_prompts)].format(
            repo=REPOS[int(rand() * n_repos)], n=2 + int(rand() * 9998)
        )
        task_id = _uuid7(created, rng)
        events = [(task_id, "queued", created)]
        started = completed = duration_us = None
        in_tok = out_tok = cr_tok = cw_tok = 0
        if status != "queued":
            started = min(created + int(min(expovariate(0.125), 600.0) * _S), now_us)
            if status != "cancelled" or rand() < 0.5:
                events.append((task_id, "running", started))
                in_tok = int(exp(gauss(9.5, 1.0)))
                out_tok = int(exp(gauss(7.5, 1.0)))
                cr_tok = int(in_tok * 3 * rand())
                cw_tok = int(in_tok * 0.3 * rand())
            else:
                started = None
        if status in _ENDED:
            base = started or created
            completed = min(base + int(min(exp(gauss(5.0, 1.1)), 7200.0) * _S), now_us)
            if started is not None:
                duration_us = completed - started
            events.append((task_id, status, completed))
        running = status == "running"
        row: tuple[Any, ...] = (
            task_id, status, agent_type,
            f"{agent_type}-{1 + int(rand() * 4)}" if started else None,
            source, prompt,
            "Done: opened a pull request with the fix." if status == "completed" else None,
            "Agent exceeded its tool-call budget." if status == "failed" else None,
            f"user-{1 + int(rand() * 40)}", None, None,
            f"flow-{1 + int(rand() * 5000)}" if rand() < 0.3 else None,
            model, cost_of(model, in_tok, out_tok, cr_tok, cw_tok), False,
            in_tok, out_tok, cr_tok, cw_tok, duration_us,
            created, started, completed, completed or started or created,
            started + int((0.3 + 5.7 * rand()) * _S) if started else None,
            False, "{}", 0, 0, False,
            # A running sample holds the default lease from now: nobody works on it, so
            # unless an agent takes it over it ends failed by the lease reaper.
            lease if running else None,
            DEFAULT_LEASE_SECONDS if running else None,
            REPORTED_BY_AGENT if status == "failed" else None,
        )  # fmt: skip
        yield row, events
