"""Analytics answers against brute force over the raw task rows, after a mixed load.

Shared by the soak's final audit (`bench/soak.py`) and its bounded CI version
(`hardening/test_analytics_under_load.py`). The brute force is `tests/analytics/brute.py`
(written from docs/api.md §5 alone), compared with the semantics of
`analytics/test_property.py`: everything exact (to 1e-9 relative), percentiles within 2 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select

from dashboard_api.db.engine import Database
from dashboard_api.db.models import Task
from dashboard_api.timeutil import format_ts
from tests.analytics import brute

HISTOGRAM_KEYS = ("tasks", "completed", "failed", "cost_usd", "input_tokens", "output_tokens")


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    agent_type: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    tz: str = "UTC"
    period: str = "hour"

    def params(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "agent_type": list(self.agent_type),
            "source": list(self.source),
        }

    def __str__(self) -> str:
        filters = f" agent_type={list(self.agent_type)}" if self.agent_type else ""
        filters += f" source={list(self.source)}" if self.source else ""
        return f"[{format_ts(self.start)}, {format_ts(self.end)}){filters} {self.tz}/{self.period}"


@dataclass
class Audit:
    """How many figures were compared, over how many tasks, and every disagreement."""

    figures: int = 0
    tasks: int = 0
    problems: list[str] = field(default_factory=list)

    def close(self, got: Any, want: Any, what: str) -> None:
        self.figures += 1
        if want is None:
            ok = got is None
        elif isinstance(want, float):
            ok = isinstance(got, int | float) and abs(got - want) <= 1e-9 * abs(want) + 1e-12
        else:
            ok = got == want
        if not ok:
            self.problems.append(f"{what}: API {got!r}, brute force {want!r}")

    def percentile(self, got: Any, want: Any, what: str) -> None:
        self.figures += 1
        if want is None:
            ok = got is None
        else:
            ok = isinstance(got, int | float) and abs(got - want) <= 0.02 * want + 1e-9
        if not ok:
            self.problems.append(f"{what}: API {got!r}, brute force {want!r} (2 % allowed)")

    def metrics(self, got: dict[str, Any], want: dict[str, Any], what: str) -> None:
        for key, value in want.items():
            if key.startswith(("p50", "p95")):
                self.percentile(got.get(key), value, f"{what}.{key}")
            else:
                self.close(got.get(key), value, f"{what}.{key}")


async def load_tasks(database_url: str) -> list[Any]:
    """Every task row, straight from the database (not through the API)."""
    db = Database(database_url)
    try:
        async with db.read() as session:
            return list((await session.scalars(select(Task))).all())
    finally:
        await db.dispose()


async def compare(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    raw: Sequence[Any],
    windows: Sequence[Window],
    audit: Audit | None = None,
) -> Audit:
    """Summary, histogram and performance of every window, against brute force over `raw`."""
    audit = audit or Audit()
    audit.tasks = len(raw)
    for w in windows:
        rows = brute.in_window(raw, w.start, w.end, w.agent_type, w.source)
        params = w.params()

        r = await http.get("/api/analytics/summary", params=params, headers=headers)
        if r.status_code != 200:
            audit.problems.append(f"summary {w}: {r.status_code} {r.text[:300]}")
        else:
            got = r.json()
            for key, value in brute.summary(rows, w.start, w.end).items():
                audit.close(got.get(key), value, f"summary {w} {key}")

        r = await http.get(
            "/api/analytics/costs/histogram",
            params={**params, "tz": w.tz, "period": w.period},
            headers=headers,
        )
        if r.status_code != 200:
            audit.problems.append(f"histogram {w}: {r.status_code} {r.text[:300]}")
        else:
            got_buckets = r.json()["buckets"]
            want_buckets = brute.histogram(rows, w.tz, w.period, w.start, w.end)
            starts = [b["start"] for b in got_buckets]
            audit.close(starts, [format_ts(b["start"]) for b in want_buckets], f"buckets {w}")
            for g, e in zip(got_buckets, want_buckets, strict=False):
                for key in HISTOGRAM_KEYS:
                    audit.close(g.get(key), e[key], f"histogram {w} {g['start']} {key}")

        r = await http.get("/api/analytics/performance", params=params, headers=headers)
        if r.status_code != 200:
            audit.problems.append(f"performance {w}: {r.status_code} {r.text[:300]}")
            continue
        got = r.json()
        audit.metrics(got["overall"], brute.metrics(rows), f"performance {w} overall")
        for name in ("agent_type", "source", "model"):
            groups = got[f"by_{name}"]
            keys = sorted({getattr(t, name) or "" for t in rows})
            audit.close([g[name] or "" for g in groups], keys, f"performance {w} {name} groups")
            for g in groups:
                part = [t for t in rows if (getattr(t, name) or "") == (g[name] or "")]
                audit.metrics(g, brute.metrics(part), f"performance {w} {name}={g[name]}")
    return audit
