"""analytics: histogram rows from the 1-hour grain up

Revision ID: 0020_hourly_histograms
Revises: 0019_retention_empty_before, 0008_analytics_packed_histograms
Create Date: 2026-12-08 00:50:00.000000

Percentiles read the histogram rows of a window's whole blocks and bin the raw tasks of
its partial finest blocks at the edges. With the 4-hour grain the finest, an edge held
up to 2 hours of tasks, binned on every request (performance at 10M tasks: ~7,600 tasks,
~16 ms); with 1-hour rows at most 30 minutes (services/analytics/layout.py HIST_GRAINS).

The 1-hour rows are built here in one INSERT ... SELECT, grouped in SQL: the tasks
binned per (hour, agent_type, source, model, failure_reason, kind, bin), spread into the
series the service writes (per model, all models, the marginals, the failure reasons'),
minus what `analytics_pending` holds and has not been folded yet (the fold adds it to
every histogram grain, the new one included, so the rows start at what the coarser
grains hold now). A row's bins are packed as the service packs them: `bin_lo`, then the
counts from it to the highest non-zero bin as little-endian 64-bit integers (on
PostgreSQL in SQL, hex text decoded once per row; SQLite before 3.41 has no `unhex`,
so a function registered on the migration's connection packs each row's "bin:count"
list). Hours whose tasks were pruned get rows of the tasks left (the 4-hour rows and up
keep the pruned ones): windows with edges on 4-hour boundaries there are unchanged, as a
prune promised (docs/retention.md).
"""

# The statements are built from this module's constants only (no value from outside).
# ruff: noqa: S608

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

from alembic import op

revision: str = "0020_hourly_histograms"
# Also a merge of the packed-histogram branch, whose table layout the rows are written in.
down_revision: str | Sequence[str] | None = (
    "0019_retention_empty_before",
    "0008_analytics_packed_histograms",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The layout as this revision writes it (services/analytics/layout.py).
_HOUR = 3600
_FAILURE_SERIES = {"lease_expired": 4, "agent": 5}
_PACK = "dashboard_pack_bins_0020"


def _thresholds() -> tuple[int, ...]:
    out = [1]
    while True:
        nxt = max(out[-1] + 1, out[-1] * 104 // 100)
        if nxt > 2**63 - 1:
            return tuple(out)
        out.append(nxt)


def _pack_bins(pairs: str) -> bytes:
    """SQLite: a row's counts from "bin:count,..." (any order, no zero count)."""
    bins = {int(b): int(n) for b, n in (p.split(":") for p in pairs.split(","))}
    lo, hi = min(bins), max(bins)
    values = array("q", bytes(8 * (hi - lo + 1)))
    for index, count in bins.items():
        values[index - lo] = count
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return values.tobytes()


def _spread(finest: str) -> str:
    """The rows of each series (series, bucket, agent_type, source, model, kind, bin, n)
    that the finest groups add to, as `rollups.deltas` spreads a contribution."""
    reasons = ", ".join(f"'{r}'" for r in _FAILURE_SERIES)
    series = " ".join(f"WHEN '{r}' THEN {s}" for r, s in _FAILURE_SERIES.items())
    parts = [
        "SELECT 1 AS series, bucket, agent_type, source, model, kind, bin, n",
        "SELECT 0, bucket, agent_type, source, '', kind, bin, n",
        "SELECT 2, bucket, agent_type, '', '', kind, bin, n",
        "SELECT 2, bucket, '', source, '', kind, bin, n",
        "SELECT 2, bucket, '', '', '', kind, bin, n",
        "SELECT 3, bucket, '', '', model, kind, bin, n",
        f"SELECT CASE reason {series} END, bucket, agent_type, source, model, kind, bin, n",
    ]
    out = [f"{part} FROM {finest}" for part in parts]
    out[-1] += f" WHERE reason IN ({reasons})"
    return " UNION ALL ".join(out)


_KEY = "series, bucket, agent_type, source, model, kind"


def _postgresql() -> str:
    thr = "'{" + ",".join(map(str, _thresholds())) + "}'::bigint[]"
    hour = (
        "extract(epoch FROM date_bin('1 hour', created_at, "
        "timestamptz '1970-01-01 00:00:00+00'))::bigint"
    )
    # A negative value falls below the first threshold: bin 0, as the service bins max(0, v).
    first = "(extract(epoch FROM first_output_at - started_at) * 1000000)::bigint"
    # A count as 16 hex digits, little-endian (to_hex writes a negative in two's complement).
    h = "lpad(to_hex(n), 16, '0')"
    le = " || ".join(f"substr({h}, {i}, 2)" for i in range(15, 0, -2))
    # One pass of GROUPING SETS spreads the tasks into every series: GROUPING() of
    # (agent_type, source, model, reason) tells which set (1 bit per column left out).
    series = (
        "CASE GROUPING(agent_type, source, model, reason) WHEN 1 THEN 1 WHEN 3 THEN 0 "
        "WHEN 13 THEN 3 WHEN 0 THEN CASE reason "
        + " ".join(f"WHEN '{r}' THEN {s}" for r, s in _FAILURE_SERIES.items())
        + " END ELSE 2 END"
    )
    reasons = ", ".join(f"'{r}'" for r in _FAILURE_SERIES)
    return f"""
INSERT INTO analytics_histograms
    (series, grain, bucket, agent_type, source, model, kind, bin_lo, counts)
WITH raw AS (
    SELECT {hour} AS bucket, agent_type, source, coalesce(model, '') AS model,
        coalesce(failure_reason, '') AS reason, 1 AS n, v.kind, v.bin
    FROM tasks CROSS JOIN LATERAL (VALUES
        (0, width_bucket(duration_us, {thr})),
        (1, CASE WHEN first_output_at IS NOT NULL AND started_at IS NOT NULL
            THEN width_bucket({first}, {thr}) END)
    ) AS v (kind, bin)
    WHERE v.bin IS NOT NULL
    UNION ALL
    SELECT created_s - ((created_s % {_HOUR}) + {_HOUR}) % {_HOUR}, agent_type, source,
        model, failure_reason, -sign, v.kind, v.bin
    FROM analytics_pending CROSS JOIN LATERAL (VALUES
        (0, width_bucket(duration_us, {thr})), (1, width_bucket(first_output_us, {thr}))
    ) AS v (kind, bin)
    WHERE v.bin IS NOT NULL
),
bins AS (
    SELECT {series} AS series, bucket, coalesce(agent_type, '') AS agent_type,
        coalesce(source, '') AS source, coalesce(model, '') AS model, kind, bin,
        sum(n)::bigint AS n
    FROM raw
    GROUP BY bucket, kind, bin, GROUPING SETS ((agent_type, source, model), (agent_type,
        source), (agent_type), (source), (), (model), (agent_type, source, model, reason))
    HAVING sum(n) <> 0
        AND (GROUPING(agent_type, source, model, reason) <> 0 OR reason IN ({reasons}))
),
gaps AS (
    SELECT {_KEY}, bin, n,
        bin - coalesce(lag(bin) OVER (PARTITION BY {_KEY} ORDER BY bin), bin - 1) - 1 AS gap
    FROM bins
)
SELECT series, {_HOUR}, bucket, agent_type, source, model, kind, min(bin),
    decode(string_agg(repeat('0', 16 * gap) || {le}, '' ORDER BY bin), 'hex')
FROM gaps GROUP BY {_KEY}
"""


def _sqlite() -> str:
    # Stored instants are 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC); the log bin is the last
    # threshold at or below the value (`bisect_right`), found in a temporary table.
    hour = "CAST(strftime('%s', substr(created_at, 1, 13) || ':00:00') AS INTEGER)"

    def micros(col: str) -> str:
        return (
            f"(CAST(strftime('%s', substr({col}, 1, 19)) AS INTEGER) * 1000000"
            f" + CAST(substr({col}, 21, 6) AS INTEGER))"
        )

    def log_bin(value: str) -> str:
        return (
            f"CASE WHEN {value} IS NOT NULL THEN coalesce((SELECT i FROM temp.hist_thresholds_0020"
            f" WHERE lo <= {value} ORDER BY lo DESC LIMIT 1), 0) END"
        )

    first = f"{micros('first_output_at')} - {micros('started_at')}"
    return f"""
INSERT INTO analytics_histograms
    (series, grain, bucket, agent_type, source, model, kind, bin_lo, counts)
WITH raw AS (
    SELECT {hour} AS bucket, agent_type, source, coalesce(model, '') AS model,
        coalesce(failure_reason, '') AS reason, 1 AS n,
        {log_bin("duration_us")} AS b0,
        CASE WHEN first_output_at IS NOT NULL AND started_at IS NOT NULL
            THEN {log_bin(first)} END AS b1
    FROM tasks
    UNION ALL
    SELECT created_s - ((created_s % {_HOUR}) + {_HOUR}) % {_HOUR}, agent_type, source,
        model, failure_reason, -sign,
        {log_bin("duration_us")}, {log_bin("first_output_us")}
    FROM analytics_pending
),
finest AS (
    SELECT bucket, agent_type, source, model, reason, 0 AS kind, b0 AS bin, sum(n) AS n
    FROM raw WHERE b0 IS NOT NULL GROUP BY bucket, agent_type, source, model, reason, b0
    UNION ALL
    SELECT bucket, agent_type, source, model, reason, 1, b1, sum(n)
    FROM raw WHERE b1 IS NOT NULL GROUP BY bucket, agent_type, source, model, reason, b1
),
bins AS (
    SELECT {_KEY}, bin, sum(n) AS n FROM ({_spread("finest")}) AS spread
    GROUP BY {_KEY}, bin HAVING sum(n) <> 0
)
SELECT series, {_HOUR}, bucket, agent_type, source, model, kind, min(bin),
    {_PACK}(group_concat(bin || ':' || n, ','))
FROM bins GROUP BY {_KEY}
"""


def upgrade() -> None:
    bind = op.get_bind()
    # Idempotent: no 1-hour histogram row may exist yet, but a half-applied run left some.
    op.execute(f"DELETE FROM analytics_histograms WHERE grain = {_HOUR}")
    if bind.dialect.name == "postgresql":
        # One statement over every task: memory to hash its groups instead of sorting on
        # disk, and no JIT compilation (a second of it for a statement run once).
        op.execute("SET LOCAL work_mem = '1GB'")
        op.execute("SET LOCAL jit = off")
        op.execute(_postgresql())
        op.execute("ANALYZE analytics_histograms")
        return
    bind.connection.dbapi_connection.create_function(_PACK, 1, _pack_bins, deterministic=True)  # type: ignore[union-attr]
    op.execute("CREATE TEMP TABLE hist_thresholds_0020 (lo INTEGER PRIMARY KEY, i INTEGER)")
    rows = ", ".join(f"({lo}, {i})" for i, lo in enumerate(_thresholds(), start=1))
    op.execute(f"INSERT INTO temp.hist_thresholds_0020 (lo, i) VALUES {rows}")
    op.execute(_sqlite())
    op.execute("DROP TABLE temp.hist_thresholds_0020")


def downgrade() -> None:
    op.execute(f"DELETE FROM analytics_histograms WHERE grain = {_HOUR}")
