"""CPU per request, analytics reads on generic plans against custom plans (bench.plans
--cpu): the app in this process (`time.process_time`) and the PostgreSQL backends of the
benchmark's database (`/proc/PID/schedstat`, nanoseconds on CPU), which the load of a
shared machine barely moves. The two plan modes take turns, `rounds` times, each round
`requests` sequential requests after a warm-up; the best round of each is reported."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench._common import connect

_WARMUP = 10


async def _backends_ns(monitor: Any) -> int:
    """CPU time so far of the database's backends other than the monitor's own."""
    pids = await monitor.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    total = 0
    for (pid,) in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # ended meanwhile
            continue
    return total


async def report_cpu(
    app: Any,
    client: httpx.AsyncClient,
    database: str,
    name: str,
    path: str,
    params: dict[str, Any],
    *,
    rounds: int,
    requests: int,
) -> None:
    db = app.state.ctx.db
    # The generic-plan sessions, and the main pool's autocommit sessions (custom plans)
    # put in their place for the other mode: the same statements, the other plan mode.
    modes = {"custom": db._statement_sessions, "generic": db._generic_sessions}
    best: dict[str, tuple[float, float]] = {}
    monitor = await connect(database)
    try:
        for _ in range(rounds):
            for mode, sessions in modes.items():
                db._generic_sessions = sessions
                for _ in range(_WARMUP):
                    (await client.get(path, params=params)).raise_for_status()
                b0, c0 = await _backends_ns(monitor), time.process_time()
                for _ in range(requests):
                    (await client.get(path, params=params)).raise_for_status()
                app_ms = (time.process_time() - c0) * 1e3 / requests
                db_ms = (await _backends_ns(monitor) - b0) / 1e6 / requests
                old = best.get(mode)
                best[mode] = (min(old[0], app_ms), min(old[1], db_ms)) if old else (app_ms, db_ms)
    finally:
        db._generic_sessions = modes["generic"]
        await monitor.close()
    (c_app, c_db), (g_app, g_db) = best["custom"], best["generic"]
    print(
        f"{name:<30} {c_app:>8.2f} {g_app:>8.2f} {c_db:>8.3f} {g_db:>8.3f} "
        f"{g_db / c_db if c_db else float('nan'):>7.2f} "
        f"{(g_app + g_db) / (c_app + c_db):>7.2f}",
        flush=True,
    )


HEADER = (
    f"{'request':<30} {'app ms':>8} {'app ms':>8} {'db ms':>8} {'db ms':>8} {'db':>7} "
    f"{'total':>7}\n"
    f"{'(CPU per request, best round)':<30} {'custom':>8} {'generic':>8} {'custom':>8} "
    f"{'generic':>8} {'g/c':>7} {'g/c':>7}"
)
