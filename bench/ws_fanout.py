"""WebSocket fan-out benchmark: one replica (real uvicorn) on PostgreSQL + Redis, loopback.

    python -m bench.ws_fanout [--subscribers 1000] [--rate 200] [--seconds 20]

Scenario `one-channel`: N subscribers on one `task:{id}` channel while a producer appends
output through the HTTP API at `rate` chunks/s. Scenario `many-channels`: N subscribers on
N task channels (one each), the same total rate spread round-robin over the tasks.

Latency is end-to-end: from just before the producer's POST (timestamp in the chunk) to
the moment a subscriber's frame is parsed. Every subscriber checks its seqs: a message
lost (or repeated) shows up as a gap. Subscribers run in a separate process (or
`--generators N`) with a minimal WebSocket client (asyncio protocol), so that the client
side is not the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from array import array
from typing import Any

import orjson

from bench._common import REDIS_URL, cpu_seconds, free_port, scratch_database
from bench._server import start_server, stop_server, wait_healthy
from bench._ws_subscribers import run_subscribers, syscalls

# --- orchestration --------------------------------------------------------------------------


def _total(rate: float, seconds: float, channels: int) -> int:
    """Chunks to publish: a multiple of the channel count, so every channel gets as many."""
    return max(channels, int(rate * seconds) // channels * channels)


async def _produce(
    port: int, token: str, task_ids: list[str], rate: float, seconds: float, batch: int
) -> tuple[float, float, int]:
    """POST `rate` chunks/s, `batch` chunks per request, round-robin over the tasks."""
    import httpx

    total = _total(rate, seconds, len(task_ids))
    requests = (total + batch - 1) // batch
    req_rate = rate / batch
    headers = {"Authorization": f"Bearer {token}"}
    start = time.perf_counter() + 0.2
    sent = 0
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            due = start + i / req_rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task_id = task_ids[i % len(task_ids)]
            n = min(batch, total - i * batch)
            stamp = f"{time.time():.6f}"
            body = {"chunks": [{"content": f"{stamp}|chunk {i}.{k}"} for k in range(n)]}
            r = await client.post(f"/api/tasks/{task_id}/output", json=body)
            if r.status_code != 200:
                errors += 1
            sent += 1

    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, limits=limits, timeout=30
    ) as client:
        t0 = time.time()
        await asyncio.gather(*(worker(client) for _ in range(8)))
        t1 = time.time()
    return t0, t1, errors


async def _produce_redis(
    prefix: str, task_ids: list[str], rate: float, seconds: float
) -> tuple[float, float, int]:
    """Publish `task_output` events straight to the broker channels (what the service
    publishes after each commit), so that only the fan-out path is measured."""
    import redis.asyncio as aioredis

    total = _total(rate, seconds, len(task_ids))
    client = aioredis.Redis.from_url(REDIS_URL)
    seqs = dict.fromkeys(task_ids, 0)
    start = time.perf_counter() + 0.2
    t0 = time.time()
    try:
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task_id = task_ids[i % len(task_ids)]
            seqs[task_id] += 1
            event = {
                "type": "task_output",
                "task_id": task_id,
                "seq": seqs[task_id],
                "stream": "stdout",
                "content": f"{time.time():.6f}|chunk {i}",
                "created_at": "2026-01-01T00:00:00.000Z",
                "channel": f"task:{task_id}",
            }
            await client.publish(f"{prefix}ev:task:{task_id}", orjson.dumps(event))
    finally:
        await client.aclose()
    return t0, time.time(), 0


async def _start_subscribers(
    port: int, token: str, channels: list[str], expected: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.ws_fanout",
        "--role",
        "subscribers",
        "--port",
        str(port),
        "--token",
        token,
        "--channels",
        json.dumps(channels),
        "--expected",
        str(expected),
        "--grace",
        "15",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def _subscriber_result(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    result: dict[str, Any] = {}
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            break
        if line.startswith(b"RESULT "):
            result = json.loads(line[7:])
            break
    await proc.wait()
    return result


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The subscriber processes' results as one: sums, and percentiles over all samples."""
    lat: array[float] = array("d")
    for part in parts:
        with open(part["latencies_file"], "rb") as f:
            lat.frombytes(f.read())
        os.unlink(part["latencies_file"])
    ordered = sorted(lat)

    def pct(p: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, max(0, int(p * len(ordered) + 0.999999) - 1))]

    merged: dict[str, Any] = {
        k: sum(part[k] for part in parts)
        for k in ("received", "expected", "gaps", "duplicates", "closed", "cpu_s", "reads")
    }
    merged["last_receive"] = max(part["last_receive"] for part in parts)
    merged.update(p50_ms=pct(0.50), p99_ms=pct(0.99), max_ms=pct(1.0))
    return merged


async def scenario(
    name: str,
    port: int,
    tokens: dict[str, str],
    subscribers: int,
    channels: int,
    rate: float,
    seconds: float,
    batch: int,
    producer: str = "http",
    prefix: str = "",
    server_pid: int = 0,
    generators: int = 1,
) -> dict[str, Any]:
    import httpx

    run = uuid.uuid4().hex[:8]
    task_ids = [f"bench-{run}-{i}" for i in range(channels)]
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {tokens['agent']}"},
        timeout=30,
    ) as client:
        for chunk in range(0, len(task_ids), 50):
            await asyncio.gather(
                *(
                    client.post(
                        "/api/tasks",
                        json={
                            "task_id": t,
                            "agent_type": "bench",
                            "input_message": "bench",
                            "status": "running",
                        },
                    )
                    for t in task_ids[chunk : chunk + 50]
                )
            )
    total = _total(rate, seconds, channels)
    per_channel = total // channels
    sub_channels = [f"task:{task_ids[i % channels]}" for i in range(subscribers)]
    procs = [
        await _start_subscribers(port, tokens["user"], sub_channels[g::generators], per_channel)
        for g in range(generators)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"READY":
            raise RuntimeError(f"subscribers failed: {line!r}")
    server_cpu0 = cpu_seconds(server_pid)
    server_io0 = syscalls(server_pid)
    hub0 = await _hub_counters(port, tokens["agent"])
    if producer == "redis":
        t0, t1, errors = await _produce_redis(prefix, task_ids, rate, seconds)
    else:
        t0, t1, errors = await _produce(port, tokens["agent"], task_ids, rate, seconds, batch)
    for proc in procs:
        assert proc.stdin is not None
        with contextlib.suppress(ConnectionError):  # they may have finished already
            proc.stdin.write(b"DONE\n")
            await proc.stdin.drain()
    parts = [await _subscriber_result(proc) for proc in procs]
    server_cpu = cpu_seconds(server_pid) - server_cpu0
    hub1 = await _hub_counters(port, tokens["agent"])
    hub = {k: hub1[k] - hub0.get(k, 0.0) for k in hub1}
    server_writes = syscalls(server_pid)[1] - server_io0[1]
    result = _merge(parts)
    client_cpu = float(result["cpu_s"])
    client_reads = int(result["reads"])
    window = max(result.get("last_receive", t1), t1) - t0
    lost = result["expected"] - result["received"]
    return {
        "scenario": name,
        "producer": producer,
        "subscribers": subscribers,
        "channels": channels,
        "published": total,
        "chunks_per_post": batch,
        "publish_errors": errors,
        "publish_rate_achieved": round(total / (t1 - t0), 1),
        "delivered": result["received"],
        "expected": result["expected"],
        "lost": lost,
        "gaps": result["gaps"],
        "duplicates": result["duplicates"],
        "delivered_per_s": round(result["received"] / window, 1),
        "latency_p50_ms": _r(result["p50_ms"]),
        "latency_p99_ms": _r(result["p99_ms"]),
        "latency_max_ms": _r(result["max_ms"]),
        "closed_connections": result["closed"],
        "server_cpu_s": round(server_cpu, 2),
        "subscriber_cpu_s": round(client_cpu, 2),
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / max(1, result["received"]), 2),
        "subscriber_cpu_us_per_delivery": round(client_cpu * 1e6 / max(1, result["received"]), 2),
        # Deliveries per write syscall on the server and per read on the subscribers: how
        # many frames share one socket operation (1.0 = one syscall per frame).
        "frames_per_server_write": round(result["received"] / max(1, server_writes), 2),
        "frames_per_subscriber_read": round(result["received"] / max(1, client_reads), 2),
        "loadavg_1m": os.getloadavg()[0],
        # From the server's /metrics (None when it does not count them): the share of
        # live deliveries written by a channel group's shared write, and how often
        # members left their group or a group was dissolved during the run.
        "shared_delivery_share": (
            round(hub["events_delivered_shared"] / hub["events_delivered"], 3)
            if "events_delivered_shared" in hub and hub.get("events_delivered")
            else None
        ),
        "group_leaves": hub.get("ws_group_leaves"),
        "group_dissolves": hub.get("ws_group_dissolves"),
    }


_HUB_COUNTERS = {
    "dashboard_events_delivered_total": "events_delivered",
    "dashboard_events_delivered_shared_total": "events_delivered_shared",
    "dashboard_ws_group_leaves_total": "ws_group_leaves",
    "dashboard_ws_group_dissolves_total": "ws_group_dissolves",
}


async def _hub_counters(port: int, token: str) -> dict[str, float]:
    """The hub's delivery counters from the server's /metrics (those it exposes)."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
    found: dict[str, float] = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in _HUB_COUNTERS:
            found[_HUB_COUNTERS[name]] = float(value)
    return found


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


TARGET_P99_MS = 50.0  # 1,000 subscribers x 200 chunks/s on a 2-core machine


async def main(args: argparse.Namespace) -> None:
    prefix = f"dashbench:{uuid.uuid4().hex[:8]}:"
    async with scratch_database("dash_bench_ws_", ("user", "agent")) as (db_url, tokens):
        env = {
            **os.environ,
            "DASHBOARD_DATABASE_URL": db_url,
            "DASHBOARD_REDIS_URL": REDIS_URL,
            "DASHBOARD_REDIS_PREFIX": prefix,
            "DASHBOARD_LOG_LEVEL": "WARNING",
        }
        variants: list[tuple[str, str | None]] = [("current", None)]
        if args.before_src:
            variants.insert(0, ("before", args.before_src))
        scenarios: list[tuple[str, int, int]] = []
        if args.scenario in ("all", "one-channel"):
            scenarios.append(("one-channel", 1, args.batch))
        if args.scenario in ("all", "many-channels"):
            scenarios.append(("many-channels", args.subscribers, 1))
        results = []
        for name, channels, batch in scenarios:
            for variant, src in variants:
                port = free_port()
                server = start_server(port, env, src)
                try:
                    await wait_healthy(port)
                    result = await scenario(
                        name,
                        port,
                        tokens,
                        args.subscribers,
                        channels,
                        args.rate,
                        args.seconds,
                        batch,
                        args.producer,
                        prefix,
                        server.pid,
                        args.generators,
                    )
                finally:
                    stop_server(server)
                result["server"] = variant
                results.append(result)
                print(json.dumps(result), flush=True)
        _table(results)


def _table(results: list[dict[str, Any]]) -> None:
    cols = [
        "scenario",
        "server",
        "producer",
        "subscribers",
        "channels",
        "published",
        "delivered",
        "lost",
        "closed_connections",
        "delivered_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "server_cpu_us_per_delivery",
        "subscriber_cpu_us_per_delivery",
        "frames_per_server_write",
        "shared_delivery_share",
        "group_leaves",
        "loadavg_1m",
    ]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"\ntargets: lost = 0; latency_p99_ms < {TARGET_P99_MS:g} (1,000 subscribers, 200/s)")
    for r in results:
        p99 = r["latency_p99_ms"]
        verdicts = [
            f"lost {r['lost']} ({'ok' if r['lost'] == 0 else 'MISSED'})",
            f"p99 {p99} ms vs < {TARGET_P99_MS:g} "
            f"({'ok' if p99 is not None and p99 < TARGET_P99_MS else 'MISSED'})",
        ]
        print(f"  {r['scenario']} [{r['server']}]: " + "; ".join(verdicts))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", default="main", choices=["main", "subscribers"])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--producer",
        default="http",
        choices=["http", "redis"],
        help="http: POST /output (end to end, includes the database write); "
        "redis: publish the service's events to the broker directly (fan-out only)",
    )
    parser.add_argument(
        "--batch", type=int, default=5, help="chunks per POST in the one-channel scenario"
    )
    parser.add_argument(
        "--scenario", default="all", choices=["all", "one-channel", "many-channels"]
    )
    parser.add_argument(
        "--before-src",
        help="also run each scenario against this checkout's src first (e.g. "
        "`git archive <commit> src | tar -x -C /tmp/before` then /tmp/before/src), "
        "in the same run and database, for before/after figures",
    )
    parser.add_argument(
        "--generators",
        type=int,
        default=1,
        help="subscriber processes (more than one only where spare cores exist: on a "
        "shared 2-core machine two were no faster than one)",
    )
    # subscriber-process arguments
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="")
    parser.add_argument("--channels", default="[]")
    parser.add_argument("--expected", type=int, default=0)
    parser.add_argument("--grace", type=float, default=15.0)
    args = parser.parse_args()
    if args.role == "subscribers":
        # uvloop: the stdlib loop's Python-level reads cost the subscriber process about
        # as much CPU as the whole fan-out costs the server (py-spy: ~90 % of its samples
        # were in asyncio/selector_events.py).
        import uvloop

        uvloop.run(run_subscribers(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
