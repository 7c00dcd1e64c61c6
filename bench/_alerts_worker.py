"""One process of `bench.alerts`: times rounds of the code importable as `dashboard_api`
(this checkout's, or another's `src` first on PYTHONPATH) on request.

Reads commands from stdin, one per line, and answers each with one JSON line:
`rules`, `budgets`, `floor` (one timed call: `{"ms", "statements"}`). Timing happens
here, around the call alone, so that the pipe's latency is not in the figures. The
evaluation instant is fixed (`--now`, the newest seeded task), as the data is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from typing import Any

from sqlalchemy import event, text

from dashboard_api.db.engine import Database
from dashboard_api.services.alerts.evaluate import evaluate_rules
from dashboard_api.services.budgets.service import evaluate_budgets
from dashboard_api.settings import Settings


async def main(args: argparse.Namespace) -> None:
    import dashboard_api

    now = datetime.fromisoformat(args.now)
    settings = Settings(_env_file=None, database_url=args.url)
    db = Database(args.url)
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)

    async def rules() -> None:
        changed = await evaluate_rules(db, settings, now=now)
        assert not changed, changed  # thresholds no rule reaches: a pure evaluation

    async def budgets() -> None:
        await evaluate_budgets(db.read, db.write, now=now)

    async def floor() -> None:
        async with db.read() as session:
            await session.execute(text("SELECT 1"))

    calls = {"rules": rules, "budgets": budgets, "floor": floor}
    print(json.dumps({"ready": dashboard_api.__file__}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            statements[0] = 0
            start = time.perf_counter()
            await calls[line]()
            ms = (time.perf_counter() - start) * 1000
            print(json.dumps({"ms": ms, "statements": statements[0]}), flush=True)
    finally:
        await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--now", required=True)
    asyncio.run(main(parser.parse_args()))
