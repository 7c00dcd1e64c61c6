"""Latency growth: the same requests on databases of different sizes, timed alternately.

Run: `.venv/bin/python -m bench.growth --db growth_1m,growth_10m [--requests 20] [--case TEXT]`
on databases seeded as bench/README.md's "Growth" describes. Serves each database with
its own uvicorn process of this code, then times every list and analytics request of
`bench.plans` (those whose parameters do not depend on the data: not the cursor or the
task detail) on each database in turn, request by request, each followed by a `GET
/api/health` on the same connection. So every database sees the same moments of a shared
machine, and each p50 is also given over its own server's floor. Reported: each p50, and
its ratio to the first database's (raw, and of the floor multiples).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics

from bench._common import KeepAliveClient, cli, db_url, free_port, log, task_count
from bench._server import start_server, stop_server, wait_healthy
from bench.analytics import timed_alternately
from bench.plans import cases


async def main(args: argparse.Namespace) -> int:
    names = args.db.split(",")
    ports, procs, headers = [], [], []
    try:
        for name in names:
            env = {**os.environ, "DASHBOARD_DATABASE_URL": db_url(name)}
            env.pop("DASHBOARD_REDIS_URL", None)
            env["DASHBOARD_LOG_LEVEL"] = "WARNING"
            token = cli("token", "create", "--user", "bench", "--role", "user", env=env).split()[-1]
            headers.append({"Authorization": f"Bearer {token}"})
            ports.append(free_port())
            # Idle keep-alive connections wait while another database answers a cold q (seconds).
            keep = ["--timeout-keep-alive", "600"]
            procs.append(start_server(ports[-1], env, None, uvicorn_args=keep, profile=False))
        for port in ports:
            await wait_healthy(port, timeout=180)
        sizes = [await task_count(name) or 0 for name in names]
        log("tasks: " + ", ".join(f"{n} {s:,}" for n, s in zip(names, sizes, strict=True)))
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(KeepAliveClient("127.0.0.1", port, h))
                for port, h in zip(ports, headers, strict=True)
            ]
            print(f"{'request':<28} " + " ".join(f"{n:>24}" for n in names))
            for name, path, params in cases("", 10_001, ""):
                if name in ("cursor half deep", "task detail"):
                    continue
                if args.case and args.case not in name:
                    continue
                calls = [functools.partial(c.get_json, path, params) for c in clients]
                floors = [functools.partial(c.get_json, "/api/health") for c in clients]
                times = await timed_alternately(args.requests, [*calls, *floors])
                p50 = [statistics.median(t) for t in times[: len(clients)]]
                floor = [statistics.median(t) for t in times[len(clients) :]]
                cells = [
                    f"{p:.1f} ms {p / f:.1f}x" + (
                        "" if i == 0 else f" ({p / p50[0]:.2f}, {p / f / (p50[0] / floor[0]):.2f})"
                    )
                    for i, (p, f) in enumerate(zip(p50, floor, strict=True))
                ]  # fmt: skip
                print(f"{name:<28} " + " ".join(f"{c:>24}" for c in cells), flush=True)
    finally:
        for proc in procs:
            stop_server(proc)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True, help="seeded databases, comma-separated")
    parser.add_argument("--requests", type=int, default=20, help="samples per request")
    parser.add_argument("--case", help="only the requests whose name contains this")
    return parser.parse_args()


if __name__ == "__main__":
    log("bench.growth")
    raise SystemExit(asyncio.run(main(parse_args())))
