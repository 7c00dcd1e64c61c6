"""analytics: counter marginals, series-first keys, histograms from 4 hours up

Revision ID: 0006_analytics_marginals
Revises: 0002_analytics
Create Date: 2026-11-25 20:30:00.000000

Unfiltered queries read one row per block: the counters get an overall series (2), and
both keys start with the series so that such a read is one contiguous index range.
Histogram rows of the 15-minute and 1-hour grains go (queries bin the partial 4-hour
blocks at a window's edges from raw rows).
The data is migrated in place, so no rebuild is needed; `dashboard-api rollups rebuild`
also re-clusters the tables in key order.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006_analytics_marginals"
down_revision: str | Sequence[str] | None = "0002_analytics"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The table layout as it was at this revision, written out rather than imported: a migration
# must keep doing what it did when later revisions change the application's layout module.
_KEY = ("grain", "bucket", "series", "agent_type", "source", "model")
_NEW_KEY = ("series", "grain", "bucket", "agent_type", "source", "model")
_COUNTERS = (
    "tasks",
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "duration_sum_us",
    "duration_count",
)


def _rekey(table: str, key: Sequence[str]) -> None:
    with op.batch_alter_table(table, recreate="auto") as batch:
        batch.drop_constraint(f"pk_{table}", type_="primary")
        batch.create_primary_key(f"pk_{table}", list(key))


def upgrade() -> None:
    op.execute("DELETE FROM analytics_histograms WHERE grain < 14400")
    op.execute("DELETE FROM analytics_rollups WHERE series = 2")
    sums = ", ".join(f"sum({c})" for c in _COUNTERS)
    op.execute(
        f"INSERT INTO analytics_rollups ({', '.join(_KEY)}, {', '.join(_COUNTERS)}) "  # noqa: S608 - constants
        f"SELECT grain, bucket, 2, '', '', '', {sums} FROM analytics_rollups "
        "WHERE series = 0 GROUP BY grain, bucket"
    )
    _rekey("analytics_rollups", _NEW_KEY)
    _rekey("analytics_histograms", (*_NEW_KEY, "kind", "bin"))


def downgrade() -> None:
    _rekey("analytics_histograms", (*_KEY, "kind", "bin"))
    _rekey("analytics_rollups", _KEY)
    op.execute("DELETE FROM analytics_rollups WHERE series = 2")
    # The 15-minute and 1-hour histogram rows are not restored: run `dashboard-api rollups rebuild`
    # after downgrading.
