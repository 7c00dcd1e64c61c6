"""Server CPU per producer write: PATCH (metrics + metadata) and POST …/output (5 chunks).

    python -m bench.write_cpu [--requests 300] [--rounds 3] [--before-src /tmp/before/src]

One real uvicorn server (PostgreSQL + Redis, as in production) on a database of its own;
requests are sent one at a time on one keep-alive connection, and the server's CPU
(utime + stime from /proc) over `--requests` of them is divided by their number. With
`--before-src` another checkout's `src` is served too, the two servers alternating for
`--rounds` rounds on the same database, so that both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import uuid
from typing import Any

from bench._common import REDIS_URL, KeepAliveClient, cpu_seconds, free_port, scratch_database
from bench._server import start_server, stop_server, wait_healthy


async def _measure(
    port: int, pid: int, token: str, requests: int, kinds: tuple[str, ...] = ("patch", "append_5")
) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    out: dict[str, float] = {}
    async with KeepAliveClient("127.0.0.1", port, headers) as http:
        task_id = f"cpu-{uuid.uuid4().hex[:10]}"
        body = {"task_id": task_id, "agent_type": "bench", "input_message": "x"}
        status, text = await http.request("POST", "/api/tasks", json.dumps(body).encode())
        assert status == 201, text
        status, _ = await http.request("PATCH", f"/api/tasks/{task_id}", b'{"status":"running"}')
        assert status == 200

        async def patch(i: int) -> None:
            doc = {"input_tokens": i, "output_tokens": 2 * i, "metadata": {"step": i}}
            status, text = await http.request(
                "PATCH", f"/api/tasks/{task_id}", json.dumps(doc).encode()
            )
            assert status == 200, text

        async def append(i: int) -> None:
            doc = {"chunks": [{"content": f"line {i}.{k}\n"} for k in range(5)]}
            status, text = await http.request(
                "POST", f"/api/tasks/{task_id}/output", json.dumps(doc).encode()
            )
            assert status == 200, text

        for name, call in (("patch", patch), ("append_5", append)):
            if name not in kinds:
                continue
            for i in range(20):  # warm-up
                await call(i)
            cpu0 = cpu_seconds(pid)
            for i in range(requests):
                await call(1000 + i)
            out[name] = (cpu_seconds(pid) - cpu0) * 1000 / requests
    return out


async def main(args: argparse.Namespace) -> None:
    async with scratch_database("dash_bench_cpu_", ("agent",)) as (db_url, tokens):
        token = tokens["agent"]
        env = {
            **os.environ,
            "DASHBOARD_DATABASE_URL": db_url,
            "DASHBOARD_REDIS_URL": REDIS_URL,
            "DASHBOARD_REDIS_PREFIX": f"dashbench:{uuid.uuid4().hex[:8]}:",
            "DASHBOARD_LOG_LEVEL": "WARNING",
        }
        variants: list[tuple[str, str | None]] = [("current", None)]
        if args.before_src:
            variants.insert(0, ("before", args.before_src))
        samples: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            for variant, src in variants:
                port = free_port()
                server = start_server(port, env, src)
                try:
                    await wait_healthy(port)
                    result = await _measure(
                        port, server.pid, token, args.requests, tuple(args.kinds.split(","))
                    )
                finally:
                    stop_server(server)
                for kind, ms in result.items():
                    samples.setdefault((kind, variant), []).append(ms)
                line: dict[str, Any] = {"round": round_ + 1, "server": variant}
                line |= {k: round(v, 2) for k, v in result.items()}
                line["loadavg_1m"] = os.getloadavg()[0]
                print(json.dumps(line), flush=True)
        print("\n| request | server | CPU ms per request (median of rounds) | each round |")
        print("|---|---|---|---|")
        for (kind, variant), values in samples.items():
            each = ", ".join(f"{v:.2f}" for v in values)
            print(f"| {kind} | {variant} | {statistics.median(values):.2f} | {each} |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="patch,append_5", help="comma list of requests")
    parser.add_argument("--before-src", help="also serve this checkout's src (before/after)")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
