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
import base64
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from array import array
from typing import Any

import orjson

from bench._common import REDIS_URL, cpu_seconds, free_port, scratch_database
from bench._server import start_server, stop_server, wait_healthy

# --- subscriber side (a child process) ----------------------------------------------------


# seq and the producer's timestamp (the content starts with it) of a task_output frame.
_OUTPUT_FIELDS = re.compile(rb'"seq":(\d+),.*?"content":"(\d+\.\d+)\|', re.S)


class WsClient(asyncio.Protocol):
    """A minimal WebSocket client: text frames in, pongs out, seq and latency bookkeeping."""

    def __init__(self, path: str, host: str, channel: str, stats: Stats) -> None:
        self.path = path
        self.host = host
        self.channel = channel
        self.stats = stats
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None
        self.subscribed = asyncio.get_running_loop().create_future()
        self.last_seq = 0
        self.count = 0
        self.gaps = 0
        self.dups = 0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        assert self.transport is not None
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def send_text(self, text: bytes) -> None:
        mask = os.urandom(4)
        n = len(text)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        else:
            header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def _control(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if self.open and not buf:
            self._frames(data)  # the common case: nothing left over from the last read
            return
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buf[:end]:
                raise RuntimeError(bytes(buf[:end]).decode())
            del buf[: end + 4]
            self.open = True
            self.send_text(orjson.dumps({"type": "subscribe", "channel": self.channel}))
        data_ = bytes(buf)
        buf.clear()
        self._frames(data_)

    def _frames(self, data_: bytes) -> None:
        """Handle the complete frames of `data_`; keep the rest for the next read."""
        now = time.time()
        pos = 0
        size = len(data_)
        starts: list[int] = []  # of the first task_output frames
        outputs = 0
        # Only frame headers are walked in Python; the fields of every task_output frame
        # of this read are pulled out by one regex scan (C) below.
        while size - pos >= 2:
            b0, b1 = data_[pos], data_[pos + 1]
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (data_[pos + 2] << 8) | data_[pos + 3]
                hdr = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(data_[pos + 2 : pos + 10], "big")
                hdr = 10
            start = pos + hdr
            end = start + n
            if end > size:
                break
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1:
                if data_.startswith(b'{"type":"task_output"', start):
                    outputs += 1
                    if outputs <= 3:
                        starts.append(start)
                else:
                    self.on_message(data_[start:end])
            elif opcode == 9:
                self._control(0xA, data_[start:end])
            elif opcode == 8:
                self.stats.closed += 1
        if pos < size:
            self.buf += data_[pos:]
        if outputs <= 3:
            # A few frames: plain searches cost less than setting up the regex scan.
            for start in starts:
                i = data_.index(b'"seq":', start) + 6
                j = data_.index(b",", i)
                k = data_.index(b'"content":"', j) + 11
                self._on_output(int(data_[i:j]), float(data_[k : data_.index(b"|", k)]), now)
        else:
            found = _OUTPUT_FIELDS.findall(data_, starts[0], pos)
            assert len(found) == outputs, "a task_output frame without seq or timestamp"
            self._on_outputs(found, now)

    def on_message(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        if msg.get("type") == "subscribed" and not self.subscribed.done():
            self.subscribed.set_result(None)

    def _on_output(self, seq: int, sent: float, now: float) -> None:
        if seq != self.last_seq + 1:
            self._on_outputs([(b"%d" % seq, b"%f" % sent)], now)
            return
        self.last_seq = seq
        self.stats.latencies.append((now - sent) * 1000)
        self._received(1, now)

    def _received(self, n: int, now: float) -> None:
        """Count `n` in-order outputs; the client is done once it has them all."""
        stats = self.stats
        self.count += n
        stats.received += n
        stats.last_receive = now
        if self.count >= stats.expected_per_client and not self.done:
            self.done = True
            stats.finished += 1
            if stats.finished >= stats.clients:
                stats.all_done.set()

    def _on_outputs(self, found: list[tuple[bytes, bytes]], now: float) -> None:
        seqs = [int(seq) for seq, _ in found]
        first = self.last_seq + 1
        if seqs != list(range(first, first + len(seqs))):
            # Off the common path: count gaps and duplicates one by one.
            kept = []
            for seq, item in zip(seqs, found, strict=True):
                if seq <= self.last_seq:
                    self.dups += 1
                    continue
                if seq != self.last_seq + 1:
                    self.gaps += seq - self.last_seq - 1
                self.last_seq = seq
                kept.append(item)
            found = kept
        else:
            self.last_seq = seqs[-1]
        if not found:
            return
        self.stats.latencies.extend([(now - float(sent)) * 1000 for _, sent in found])
        self._received(len(found), now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("closed before subscribed"))


class Stats:
    def __init__(self, clients: int, expected_per_client: int) -> None:
        self.clients = clients
        self.expected_per_client = expected_per_client
        self.latencies: array[float] = array("d")
        self.received = 0
        self.finished = 0
        self.closed = 0
        self.last_receive = 0.0
        self.all_done = asyncio.Event()


async def run_subscribers(args: argparse.Namespace) -> None:
    channels: list[str] = json.loads(args.channels)
    stats = Stats(len(channels), args.expected)
    loop = asyncio.get_running_loop()
    clients: list[WsClient] = []
    path = f"/ws?token={args.token}"
    sem = asyncio.Semaphore(100)

    async def connect(channel: str) -> None:
        async with sem:
            _, proto = await loop.create_connection(
                lambda: WsClient(path, f"127.0.0.1:{args.port}", channel, stats),
                "127.0.0.1",
                args.port,
            )
            clients.append(proto)
            await asyncio.wait_for(proto.subscribed, 30)

    await asyncio.gather(*(connect(ch) for ch in channels))
    cpu0 = time.process_time()
    reads0 = _syscalls(os.getpid())[0]
    print("READY", flush=True)
    # Wait for everything, or give up some time after the producer said it was done.
    deadline_task = asyncio.create_task(_wait_stdin_done(args.grace))
    done_task = asyncio.create_task(stats.all_done.wait())
    await asyncio.wait({deadline_task, done_task}, return_when=asyncio.FIRST_COMPLETED)
    fd, lat_path = tempfile.mkstemp(prefix="ws_fanout_lat_")
    with os.fdopen(fd, "wb") as f:
        stats.latencies.tofile(f)
    result = {
        "received": stats.received,
        "expected": stats.expected_per_client * len(channels),
        "gaps": sum(c.gaps for c in clients),
        "duplicates": sum(c.dups for c in clients),
        "incomplete_clients": sum(1 for c in clients if c.count < args.expected),
        "closed": stats.closed,
        "latencies_file": lat_path,
        "last_receive": stats.last_receive,
        # Measured here: the process may be gone by the time the parent could look.
        "cpu_s": time.process_time() - cpu0,
        "reads": _syscalls(os.getpid())[0] - reads0,
    }
    print("RESULT " + json.dumps(result), flush=True)
    for c in clients:
        if c.transport is not None:
            c.transport.close()


async def _wait_stdin_done(grace: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line or line.strip() == b"DONE":
            break
    await asyncio.sleep(grace)


# --- orchestration --------------------------------------------------------------------------


def _syscalls(pid: int) -> tuple[int, int]:
    """(read, write) syscalls made so far by a process (Linux /proc), (0, 0) when unknown.

    Unlike CPU time these counts do not depend on what else runs on the machine: on
    loopback most of a delivery's cost is its write on one side and its read on the other.
    """
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["syscr"]), int(fields["syscw"])
    except (OSError, ValueError, KeyError):
        return 0, 0


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
    server_io0 = _syscalls(server_pid)
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
    server_writes = _syscalls(server_pid)[1] - server_io0[1]
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
