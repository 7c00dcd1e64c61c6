"""Analytics rollups: task counters and duration histograms per time block.

Blocks come in nested grains (15 min, 1 h, 4 h, 1 day, 4 days, ...), all aligned to the
Unix epoch, so that any window aligned to 15 minutes splits into a few whole blocks.
Each block is kept in series: per (agent_type, source) for every model together
(series 0, model ''), per (agent_type, source, model) (series 1), marginals, and the
tasks with a failure reason once more per reason (see services/analytics/layout.py).
Keys start with the series, so that reading one series
over a run of blocks is one contiguous index range.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Integer, LargeBinary, SmallInteger, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base


class AnalyticsRollup(Base):
    """Task counters of one block of `grain` seconds starting at `bucket` (epoch seconds)."""

    __tablename__ = "analytics_rollups"

    series: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    grain: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    tasks: Mapped[int] = mapped_column(BigInteger, default=0)
    queued: Mapped[int] = mapped_column(BigInteger, default=0)
    running: Mapped[int] = mapped_column(BigInteger, default=0)
    completed: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelled: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_sum_us: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_count: Mapped[int] = mapped_column(BigInteger, default=0)
    # How many contributions this row has received: its tasks at the last rebuild plus
    # every contribution folded into it since (either sign counts one). Plus the block's
    # rows still in `analytics_pending`, it grows with every task write that touches the
    # block and never shrinks until a rebuild (which bumps `AnalyticsState.rebuilds`): a
    # block whose (rebuilds, changes + pending) is unchanged holds the same tasks with
    # the same statuses (services/tasks/search.py caches counts on it). Read on the overall
    # rows (series 2) only.
    changes: Mapped[int] = mapped_column(BigInteger, default=0)


class AnalyticsState(Base):
    """One row (id 1): how many times the rollups were rebuilt, and what retention pruned.

    A rebuild resets every row's `changes`, and a prune removes tasks without a
    contribution: both counts are part of every validity token taken from the rollups.
    The rollups keep counting pruned tasks (analytics of pruned periods do not change),
    so task-list totals count the tasks created before `pruned_before_s` (epoch seconds,
    on a block boundary) from the tasks table instead (services/retention.py), and
    nothing before `empty_before_s`: the tasks table holds no task created before it (a
    prune raises it behind itself, an insert of an older task lowers it), so a total does
    not walk the index entries of the rows a prune deleted."""

    __tablename__ = "analytics_state"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    rebuilds: Mapped[int] = mapped_column(BigInteger, default=0)
    prunes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pruned_before_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    empty_before_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AnalyticsHistogram(Base):
    """How many tasks of one block have a value (µs) in each log bin (kind 0: duration,
    kind 1: first output minus start), packed in one row: `counts` holds the counts of
    bins `bin_lo`, `bin_lo + 1`, ... as little-endian signed 64-bit integers
    (services/analytics/bins.py). A percentile query then reads one row per block and
    group, not one per bin."""

    __tablename__ = "analytics_histograms"

    series: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    grain: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bin_lo: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[bytes] = mapped_column(LargeBinary, default=b"")


class AnalyticsPending(Base):
    """One task write's contribution to the rollups, not yet folded into them.

    A task write appends its before (sign -1) and after (sign +1) figures here instead of
    updating the rollup rows, so that concurrent writers never queue on the same few hot
    rows (every task created now shares the current blocks). `services.analytics.fold`
    moves these into the rollups in batches; readers fold first (analytics) or add the
    pending rows to what they read (task-list totals).
    """

    __tablename__ = "analytics_pending"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    sign: Mapped[int] = mapped_column(SmallInteger)
    created_s: Mapped[int] = mapped_column(BigInteger, index=True)
    agent_type: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))
    # '' for none (the task's `failure_reason`): which failure series it also counts in.
    failure_reason: Mapped[str] = mapped_column(String(32), default="", server_default="")
    status: Mapped[str] = mapped_column(String(16))
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    duration_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    first_output_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


# The tables, for Core statements (the classes are for the ORM): one definition each.
ROLLUPS_TABLE = cast(Table, AnalyticsRollup.__table__)
STATE_TABLE = cast(Table, AnalyticsState.__table__)
HISTOGRAMS_TABLE = cast(Table, AnalyticsHistogram.__table__)
PENDING_TABLE = cast(Table, AnalyticsPending.__table__)
