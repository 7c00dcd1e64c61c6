"""10,000 WebSocket connections on one server process: memory per socket, fan-out at scale.

    python -m bench.ws_scale [--connections 10000] [--channels 1000] [--workers 1]

One run, on PostgreSQL + Redis (a database and prefix of its own), in three phases on the
same sockets:

- `idle`: every connection open, no subscription, then one `task:{id}` subscription
  each: the server's RSS growth per connection (VmRSS, summed over its worker processes);
- `task-channels`: the connections spread over `--channels` task channels (10 each at
  the defaults) while `--rate` chunks/s (1,000) are published round-robin across them;
- `tasks`: every connection on the `tasks` channel while `--status-rate` (50) status
  changes/s are published to it.

Events are published to Redis exactly as the service publishes them after a commit (the
write side is `bench.tasks_api`'s): one server process could not also absorb 1,000
appends/s through HTTP on this machine, and with `--workers 2` the events reach both
workers the way they reach replicas. Every event carries its publish time; load
generators (`--generators` processes, one per core by default, uvloop, a minimal client)
check that each connection gets every event once and in order, and time each delivery.
The bench raises its own fd limit (RLIMIT_NOFILE) to the hard limit; the server and the
generators inherit it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from typing import Any

import orjson

from bench._common import REDIS_URL, cpu_seconds, free_port, log, scratch_database
from bench._server import start_server, stop_server, wait_healthy
from bench._ws_subscribers import syscalls

TARGET_IDLE_KB = 20.0
TARGET_CHANNELS_P99_MS = 100.0
TARGET_TASKS_P99_MS = 250.0
IDLE_WINDOW_S = 5.0
# A sitecustomize that times the server's garbage collections and shared writes (see its
# docstring).
PROBE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_server_probe")


# --- the server -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _server_pids(pid: int, workers: int) -> list[int]:
    """The processes that serve: the server itself, or its workers under `--workers`."""
    return _children(pid) if workers > 1 else [pid]


def _rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _start_server(
    port: int, env: dict[str, str], src: str | None, workers: int, gc_probe: str
) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(filter(None, [PROBE_DIR, env.get("PYTHONPATH")]))
    return start_server(
        port,
        {**env, "PYTHONPATH": path, "BENCH_SERVER_PROBE": gc_probe},
        src,
        profile=workers == 1,
        uvicorn_args=[
            "--workers",
            str(workers),
            # uvicorn's supervisor kills a worker that does not answer its health check
            # within 5 s by default; with 5,000 sockets a worker on this shared machine
            # missed it (a full garbage collection and a connect storm) and lost them all.
            "--timeout-worker-healthcheck",
            "60",
            "--backlog",
            "4096",
        ],
    )


# --- producers --------------------------------------------------------------------------


async def _publish_paced(prefix: str, rate: float, total: int, message: Any) -> tuple[float, float]:
    """Publish `total` messages at `rate`/s (`message(i)` → (channel, bytes), stamped when
    due): each tick sends what is due in one pipeline."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    sent = 0
    start = time.perf_counter() + 0.1
    t0 = time.time()
    try:
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                async with client.pipeline(transaction=False) as pipe:
                    for i in range(sent, due):
                        channel, data = message(i)
                        pipe.publish(prefix + channel, data)
                    await pipe.execute()
                sent = due
            await asyncio.sleep(0.002)
    finally:
        await client.aclose()
    return t0, time.time()


def _output_event(run: str, channels: int, i: int) -> tuple[str, bytes]:
    task_id = f"{run}-{i % channels}"
    event = {
        "type": "task_output",
        "task_id": task_id,
        "seq": i // channels + 1,
        "stream": "stdout",
        "content": f"{time.time():.6f}|chunk {i}",
        "created_at": "2026-01-01T00:00:00.000Z",
        "channel": f"task:{task_id}",
    }
    return f"task:{task_id}", orjson.dumps(event)


def _status_event(template: dict[str, Any], i: int) -> tuple[str, bytes]:
    # A task summary as the service publishes it; the task_id numbers the event.
    event = {
        "type": "task_status",
        **template,
        "task_id": f"s{i + 1}",
        "input_preview": f"{time.time():.6f}|status change {i}",
        "channel": "tasks",
    }
    return "tasks", orjson.dumps(event)


# --- orchestration ----------------------------------------------------------------------


class Generators:
    """The load-generator processes and their line protocol."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    async def expect(self, word: str, timeout: float) -> list[str]:
        lines = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
            if not line.startswith(word):
                raise RuntimeError(f"load generator: expected {word}, got {line!r}")
            lines.append(line[len(word) :].strip())
        return lines

    async def send(self, line: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def reads(self) -> int:
        return sum(syscalls(p.pid)[0] for p in self.procs)

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send("QUIT")
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()


async def _start_generators(
    args: argparse.Namespace, port: int, token: str, run: str
) -> Generators:
    n = args.generators
    per = [args.connections // n + (1 if g < args.connections % n else 0) for g in range(n)]
    procs = []
    first = 0
    for count in per:
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.ws_scale",
                "--role",
                "generator",
                "--port",
                str(port),
                "--token",
                token,
                "--run",
                run,
                "--channels",
                str(args.channels),
                "--first",
                str(first),
                "--count",
                str(count),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
        first += count
    return Generators(procs)


def _pct(lat: list[tuple[float, int]], total: int, p: float) -> float | None:
    """Nearest-rank percentile of (latency, deliveries it stands for) pairs, sorted."""
    rank = max(1, int(p * total + 0.999999))
    seen = 0
    for value, weight in lat:
        seen += weight
        if seen >= rank:
            return round(value, 2)
    return round(lat[-1][0], 2) if lat else None


class Meter:
    """Server CPU, RSS and garbage collections over its serving processes."""

    def __init__(self, pids: list[int], gc_probe: str) -> None:
        self.pids = pids
        self.gc_probe = gc_probe
        self.forced: list[float] = []  # the timed `--full-gc` collections (ms)

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def rss_kb(self) -> int:
        return _rss_kb(self.pids)

    async def full_gc(self) -> dict[str, Any]:
        return await _full_gc(self)

    def writes(self) -> int:
        """Write syscalls so far (a socket write each, nearly all of them)."""
        return sum(syscalls(p)[1] for p in self.pids)

    async def gc(self) -> dict[str, Any]:
        """The collections so far, summed over the processes (`_server_probe`): per
        generation the count, the seconds and the longest pause; the objects a full one
        walks. And since the previous call: the shared writes' lags (publish → written to
        the group's last member, ms) with the deliveries each stands for, the most bytes
        one member's transport held unsent, the arrivals' lags (publish → the hub, ms),
        and the hub's delivery counters (so far)."""
        total: dict[str, Any] = {
            "collections": [0, 0, 0],
            "seconds": [0.0, 0.0, 0.0],
            "longest": [0.0, 0.0, 0.0],
            "tracked": [0],
            "write_lags": [],
            "arrival_lags": [],
            "buffered_max": [0],
            "hub": [0, 0, 0],
        }
        for pid in self.pids:
            path = f"{self.gc_probe}.{pid}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.kill(pid, signal.SIGUSR2)
            for _ in range(300):
                if os.path.exists(path):
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"the server {pid} did not write its gc figures")
            with open(path) as f:
                data = json.load(f)
            os.unlink(path)
            total["tracked"][0] += data["tracked"]
            self.forced = [round(ms, 1) for ms in data.get("forced_full_ms", ())]
            total["write_lags"] += [(ms, n) for ms, n in data.get("write_lags", ())]
            total["arrival_lags"] += [(ms, 1) for ms in data.get("arrival_lags", ())]
            total["buffered_max"][0] = max(total["buffered_max"][0], data.get("buffered_max", 0))
            hub = data.get("hub", {})
            for i, name in enumerate(
                ("events_delivered", "events_delivered_shared", "group_leaves")
            ):
                total["hub"][i] += hub.get(name, 0)
            for g in range(3):
                total["collections"][g] += data["collections"][g]
                total["seconds"][g] += data["seconds"][g]
                total["longest"][g] = max(total["longest"][g], data["longest"][g])
        return total


async def _full_gc(meter: Meter) -> dict[str, Any]:
    """One full collection in each server process, timed there (`--full-gc`)."""
    for pid in meter.pids:
        os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(1.0)
    tracked = (await meter.gc())["tracked"][0]
    return {"gc_forced_full_ms": meter.forced, "gc_tracked_after_forced": tracked}


def _gc_figures(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, Any]:
    """Full (generation 2) and young collections between two `Meter.gc` readings; the
    longest full pause is the longest so far when the window had any."""
    full = int(after["collections"][2] - before["collections"][2])
    young = sum(after["collections"][g] - before["collections"][g] for g in (0, 1))
    return {
        "gc_full": full,
        "gc_full_ms": round((after["seconds"][2] - before["seconds"][2]) * 1000, 1),
        "gc_full_longest_ms": round(after["longest"][2] * 1000, 1) if full else 0.0,
        "gc_young": int(young),
        "gc_young_ms": round(
            sum(after["seconds"][g] - before["seconds"][g] for g in (0, 1)) * 1000, 1
        ),
    }


async def _phase(
    gens: Generators,
    meter: Meter,
    kind: str,
    per_client: int,
    rate: float,
    total: int,
    message: Any,
    prefix: str,
    timed_every: int = 1,
) -> dict[str, Any]:
    """Subscribe every connection, publish, collect: one phase's figures."""
    t = time.perf_counter()
    await gens.send(f"SUB {kind} {per_client} {timed_every}")
    await gens.expect("SUBSCRIBED", 600)
    subscribe_s = time.perf_counter() - t
    await asyncio.sleep(1.0)
    rss = meter.rss_kb()
    # The server's CPU with these subscribers and no events (pings, periodic jobs), so
    # that the cost of the deliveries themselves can be told apart at low rates.
    cpu0, w0 = meter.cpu(), time.perf_counter()
    await asyncio.sleep(IDLE_WINDOW_S)
    cpu1, w1 = meter.cpu(), time.perf_counter()
    idle_rate = (cpu1 - cpu0) / (w1 - w0)
    gc0 = await meter.gc()
    cpu1, w1 = meter.cpu(), time.perf_counter()  # (the probe's CPU is not the deliveries')
    gen_cpu0 = gens.cpu()
    writes0, reads0 = meter.writes(), gens.reads()
    t0, t1 = await _publish_paced(prefix, rate, total, message)
    await gens.send("COLLECT 20")
    results = [json.loads(line) for line in await gens.expect("RESULT", 120)]
    cpu = meter.cpu() - cpu1
    gen_cpu = gens.cpu() - gen_cpu0
    writes, reads = meter.writes() - writes0, gens.reads() - reads0
    gc1 = await meter.gc()
    net = cpu - idle_rate * (time.perf_counter() - w1)
    pairs: list[tuple[float, int]] = []
    for r in results:
        with open(r["latencies_file"], "rb") as f:
            raw = f.read()
        os.unlink(r["latencies_file"])
        lat, weights = array("d"), array("I")
        lat.frombytes(raw[: r["latencies"] * lat.itemsize])
        weights.frombytes(raw[r["latencies"] * lat.itemsize :])
        pairs += zip(lat, weights, strict=True)
    pairs.sort()
    weighed = sum(w for _, w in pairs)
    # The server's share: publish → the event written to its group's last member.
    lags = sorted((float(ms), int(n)) for ms, n in gc1["write_lags"])
    lag_weight = sum(n for _, n in lags)
    arrivals = sorted(gc1["arrival_lags"])
    hub = [b - a for a, b in zip(gc0["hub"], gc1["hub"], strict=True)]
    received = sum(r["received"] for r in results)
    expected = sum(r["expected"] for r in results)
    return {
        "phase": kind,
        "subscribe_s": round(subscribe_s, 1),
        "rss_subscribed_kb": rss,
        "published": total,
        "publish_rate": round(total / max(1e-9, t1 - t0), 1),
        "expected": expected,
        "delivered": received,
        "lost": expected - received,
        "gaps": sum(r["gaps"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "closed": sum(r["closed"] for r in results),
        "p50_ms": _pct(pairs, weighed, 0.50),
        "p99_ms": _pct(pairs, weighed, 0.99),
        "max_ms": _pct(pairs, weighed, 1.0),
        "hub_arrival_p50_ms": _pct(arrivals, len(arrivals), 0.50),
        "hub_arrival_p99_ms": _pct(arrivals, len(arrivals), 0.99),
        "server_write_p50_ms": _pct(lags, lag_weight, 0.50),
        "server_write_p99_ms": _pct(lags, lag_weight, 0.99),
        "server_write_max_ms": _pct(lags, lag_weight, 1.0),
        "server_unsent_max_kb": round(gc1["buffered_max"][0] / 1024, 1),
        "shared_write_share": round(hub[1] / hub[0], 3) if hub[0] else None,
        "group_leaves": hub[2],
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_delivery": round(cpu * 1e6 / max(1, received), 2),
        "server_idle_cpu_share": round(idle_rate, 3),
        "server_cpu_us_per_delivery_over_idle": round(net * 1e6 / max(1, received), 2),
        "generators_cpu_us_per_delivery": round(gen_cpu * 1e6 / max(1, received), 2),
        # How many events share a socket write (the server's) and a read (the clients'):
        # counts, unlike CPU time, barely move with the machine's load.
        "deliveries_per_server_write": round(received / max(1, writes), 2),
        "deliveries_per_client_read": round(received / max(1, reads), 2),
        **_gc_figures(gc0, gc1),
        "loadavg_1m": round(os.getloadavg()[0], 1),
    }


async def _create_tasks(port: int, token: str, run: str, channels: int) -> dict[str, Any]:
    """The task channels' tasks; returns one task's summary (the status events' shape)."""
    import httpx

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as http:
        for start in range(0, channels, 50):
            await asyncio.gather(
                *(
                    http.post(
                        "/api/tasks",
                        json={
                            "task_id": f"{run}-{i}",
                            "agent_type": "bench",
                            "input_message": "bench",
                            "status": "running",
                        },
                    )
                    for i in range(start, min(channels, start + 50))
                )
            )
        page = (await http.get("/api/tasks", params={"limit": 1})).json()
    summary: dict[str, Any] = page["items"][0]
    return summary


async def run_variant(
    args: argparse.Namespace,
    variant: str,
    src: str | None,
    env: dict[str, str],
    tokens: dict[str, str],
    prefix: str,
) -> list[dict[str, Any]]:
    port = free_port()
    gc_probe = os.path.join(tempfile.gettempdir(), f"ws_scale_gc_{uuid.uuid4().hex[:8]}")
    server = _start_server(port, env, src, args.workers, gc_probe)
    gens: Generators | None = None
    try:
        await wait_healthy(port, timeout=30)
        run = f"b{uuid.uuid4().hex[:6]}"
        template = await _create_tasks(port, tokens["agent"], run, args.channels)
        await asyncio.sleep(1.0)
        meter = Meter(_server_pids(server.pid, args.workers), gc_probe)
        rss0 = meter.rss_kb()
        gc0 = await meter.gc()
        t = time.perf_counter()
        gens = await _start_generators(args, port, tokens["user"], run)
        retries = sum(int(n) for n in await gens.expect("CONNECTED", 600))
        connect_s = time.perf_counter() - t
        await asyncio.sleep(2.0)
        rss_idle = meter.rss_kb()
        gc1 = await meter.gc()
        idle = {
            "phase": "idle",
            "connections": args.connections,
            "connect_s": round(connect_s, 1),
            "refused_handshakes_retried": retries,
            "rss_before_kb": rss0,
            "rss_idle_kb": rss_idle,
            "idle_kb_per_connection": round((rss_idle - rss0) / args.connections, 2),
            **_gc_figures(gc0, gc1),  # the connect storm's
            "gc_tracked_per_connection": round(
                (gc1["tracked"][0] - gc0["tracked"][0]) / args.connections, 1
            ),
            **(await meter.full_gc() if args.full_gc else {}),
            "loadavg_1m": round(os.getloadavg()[0], 1),
        }
        if args.full_gc:
            # What the forced full collection kept (live), per connection.
            live = idle.pop("gc_tracked_after_forced") - gc0["tracked"][0]
            idle["gc_live_per_connection"] = round(live / args.connections, 1)
        log(json.dumps(idle))
        total = int(args.rate * args.seconds) // args.channels * args.channels
        channels = await _phase(
            gens,
            meter,
            "task",
            total // args.channels,
            args.rate,
            total,
            lambda i: _output_event(run, args.channels, i),
            prefix,
        )
        channels["subscribed_kb_per_connection"] = round(
            (channels["rss_subscribed_kb"] - rss0) / args.connections, 2
        )
        log(json.dumps(channels))
        status_total = int(args.status_rate * args.seconds)
        status = await _phase(
            gens,
            meter,
            "tasks",
            status_total,
            args.status_rate,
            status_total,
            lambda i: _status_event(template, i),
            prefix,
            args.timed_every,
        )
        log(json.dumps(status))
        results = [idle, channels, status]
        for r in results:
            r["server"] = variant
            r["workers"] = args.workers
        return results
    finally:
        if gens is not None:
            await gens.close()
        stop_server(server, grace=20)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        raise SystemExit(f"the fd limit is {hard}; {needed} connections need more")


async def main(args: argparse.Namespace) -> None:
    _raise_fd_limit(args.connections + 1000)
    prefix = f"dashbench:{uuid.uuid4().hex[:8]}:"
    async with scratch_database("dash_bench_sockets_", ("user", "agent")) as (db_url, tokens):
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
        results = []
        for variant, src in variants:
            results += await run_variant(args, variant, src, env, tokens, prefix + "ev:")
        _report(results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)


def _report(results: list[dict[str, Any]]) -> None:
    print("\n| server | workers | phase | figures |\n|---|---|---|---|")
    for r in results:
        shown = {k: v for k, v in r.items() if k not in ("server", "workers", "phase")}
        print(f"| {r['server']} | {r['workers']} | {r['phase']} | {json.dumps(shown)} |")
    print()
    for r in results:
        head = f"  {r['server']} / {r['phase']}:"
        if r["phase"] == "idle":
            kb = r["idle_kb_per_connection"]
            ok = "ok" if kb <= TARGET_IDLE_KB else "MISSED"
            print(f"{head} {kb} KB per idle connection vs <= {TARGET_IDLE_KB:g} ({ok})")
            continue
        target = TARGET_CHANNELS_P99_MS if r["phase"] == "task" else TARGET_TASKS_P99_MS
        p99 = r["p99_ms"]
        met = r["lost"] == 0 and r["duplicates"] == 0 and p99 is not None and p99 <= target
        print(
            f"{head} p99 {p99} ms vs <= {target:g}, lost {r['lost']}, duplicated "
            f"{r['duplicates']} ({'ok' if met else 'MISSED'}); publish → in the hub: p99 "
            f"{r['hub_arrival_p99_ms']} ms, → written to the last member: p99 "
            f"{r['server_write_p99_ms']} ms; CPU per "
            f"delivery: server {r['server_cpu_us_per_delivery']} µs, load generators "
            f"{r['generators_cpu_us_per_delivery']} µs; deliveries per server write "
            f"{r['deliveries_per_server_write']}"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", default="main", choices=["main", "generator"])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=1_000.0, help="chunks/s, all channels")
    parser.add_argument("--status-rate", type=float, default=50.0, help="on `tasks`, per s")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument(
        "--timed-every",
        type=int,
        default=10,
        help="`tasks` phase: every Nth connection is timed; the others are woken once 8 KB "
        "wait in their socket (SO_RCVLOWAT) and are checked for loss and order only",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--generators", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--full-gc",
        action="store_true",
        help="after the idle phase, time one full collection in the server (its pause)",
    )
    parser.add_argument("--before-src", help="run the same phases against this src first")
    parser.add_argument("--json", help="write the figures here")
    # generator-process arguments
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="")
    parser.add_argument("--run", default="")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    if args.role == "generator":
        import uvloop

        from bench._ws_load import run_generator

        uvloop.run(run_generator(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
