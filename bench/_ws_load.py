"""The load generator of `bench.ws_scale`: a share of the WebSocket connections in a
process of its own (uvloop, a minimal client), driven by the benchmark over stdin/stdout.

Each connection checks that it gets every event of its channel once and in order (an
ordinal in each event: a task_output's seq, the number in a status event's task_id) and
times each delivery from the publish time at the start of the event's text.
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
from array import array
from typing import Any

import orjson

BURST_S = 0.2  # how often the untimed connections read (see `Generator.bursts`)
# The fields a generator reads from an event frame: an ordinal (a task_output's seq, or
# the number in a status event's task_id) and the publish time at the start of its text.
_OUTPUT = re.compile(rb'"seq":(\d+),.*?"content":"(\d+\.\d+)\|', re.S)
# A whole status frame (header 0x81 0x7E + 16-bit length: these frames are 126-65535
# bytes), up to the `channel` key the bench puts last: in the `tasks` phase (500,000
# frames/s at the defaults) the frames are cut by this scan (C) instead of a header walk
# in Python, which is what the generators could not keep up with.
_STATUS = re.compile(
    rb'\x81\x7e..\{"type":"task_status",.*?"task_id":"s(\d+)",'
    rb'.*?"input_preview":"(\d+\.\d+)\|.*?"channel":"tasks"\}',
    re.S,
)
_STATUS_HEAD = b'{"type":"task_status",'
_STATUS_END = b'"channel":"tasks"}'


class Client(asyncio.Protocol):
    """One socket: handshake, (un)subscribe, frames in; ordinal and latency bookkeeping."""

    def __init__(self, gen: Generator, path: str, host: str) -> None:
        self.gen = gen
        self.path = path
        self.host = host
        self.buf = bytearray()
        self.open = asyncio.get_running_loop().create_future()
        self.subscribed: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.handshake_done = False
        # Whether its deliveries are timed; the others read in bursts (`Generator.bursts`).
        self.timed = True
        self.reset()

    def reset(self) -> None:
        self.last = 0  # the ordinal of the last event received in order
        self.count = 0
        self.gaps = 0
        self.dups = 0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        key = base64.b64encode(os.urandom(16)).decode()
        self._write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are masked; a zero mask keeps the payload as is.
        n = len(payload)
        header = bytes([0x80 | opcode, 0x80 | n]) if n < 126 else bytes([0x80 | opcode, 0xFE])
        if n >= 126:
            header += n.to_bytes(2, "big")
        self._write(header + b"\0\0\0\0" + payload)

    def send_json(self, message: dict[str, Any]) -> None:
        self._send(1, orjson.dumps(message))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if self.handshake_done and not buf:
            self._frames(data)
            return
        buf += data
        if not self.handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buf[:end]:
                if not self.open.done():
                    self.open.set_exception(RuntimeError(bytes(buf[:end]).decode()))
                if self.transport is not None:
                    self.transport.close()
                return
            del buf[: end + 4]
            self.handshake_done = True
            self.open.set_result(None)
        data = bytes(buf)
        buf.clear()
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        now = time.time()
        if self.gen.pattern is _OUTPUT:
            self._walk(data, now)
            return
        # Status frames (the `tasks` phase): up to the end of the last whole status frame
        # of this read, when nothing else is among them and their numbers follow on,
        # a few scans in C account for all of them; the read's oldest frame is timed for
        # the whole read (an upper bound for the others). Anything else: frame by frame.
        end = data.rfind(_STATUS_END)
        if end < 0:
            self._walk(data, now)
            return
        end += len(_STATUS_END)
        head = data[:end]
        n = head.count(_STATUS_HEAD)
        first = _STATUS.match(head)
        last = head.rfind(b'"task_id":"s')
        if first is not None and n == head.count(b'{"type":"') and b"\x89" not in head:
            o1 = int(first.group(1))
            on = int(head[last + 12 : head.index(b'"', last + 12)])
            if o1 == self.last + 1 and on - o1 + 1 == n:
                self.last = on
                self._count((now - float(first.group(2))) * 1000, n)
                if end < len(data):
                    self._walk(data[end:], now)
                return
        self._status_frames(data, now)

    def _status_frames(self, data: bytes, now: float) -> None:
        found = []
        pos = 0
        for m in _STATUS.finditer(data):
            if m.start() != pos:
                self._walk(data[pos : m.start()], now)
            found.append((m.group(1), m.group(2)))
            pos = m.end()
        if found:
            self._on_events(found, now)
        if pos < len(data):
            self._walk(data[pos:], now)

    def _walk(self, data: bytes, now: float) -> None:
        """Frame by frame: task_output fields by one regex scan, other messages parsed,
        pings answered; a partial frame at the end waits for the next read."""
        pos = 0
        size = len(data)
        first = -1
        events = 0
        while size - pos >= 2:
            b0, n = data[pos], data[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                hdr = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hdr = 10
            start = pos + hdr
            end = start + n
            if end > size:
                break
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1:
                if data.startswith(b'{"type":"task_output"', start):
                    events += 1
                    if first < 0:
                        first = start
                else:
                    self._control_message(data[start:end])
            elif opcode == 9:
                self._send(0xA, data[start:end])
        if pos < size:
            self.buf += data[pos:]
        if events:
            self._on_events(_OUTPUT.findall(data, first, pos), now)

    def _control_message(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        if msg.get("type") == "subscribed" and self.subscribed and not self.subscribed.done():
            self.subscribed.set_result(None)
        elif msg.get("type") == "error":
            self.gen.errors += 1

    def _on_events(self, found: list[tuple[bytes, bytes]], now: float) -> None:
        first = self.last + 1
        ords = [int(o) for o, _ in found]
        if ords != list(range(first, first + len(ords))):
            kept = []
            for o, item in zip(ords, found, strict=True):
                if o <= self.last:
                    self.dups += 1
                    continue
                self.gaps += o - self.last - 1
                self.last = o
                kept.append(item)
            found = kept
        elif ords:
            self.last = ords[-1]
        if not found:
            return
        if self.timed:
            self.gen.latencies.extend([(now - float(t)) * 1000 for _, t in found])
            self.gen.weights.extend([1] * len(found))
        self._received(len(found))

    def _count(self, latency_ms: float, n: int) -> None:
        if self.timed:
            self.gen.latencies.append(latency_ms)
            self.gen.weights.append(n)
        self._received(n)

    def _received(self, n: int) -> None:
        self.count += n
        gen = self.gen
        gen.received += n
        if self.count >= gen.expected and not self.done:
            self.done = True
            gen.finished += 1
            if gen.finished >= len(gen.clients):
                gen.all_done.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.closed += 1
        for fut in (self.open, self.subscribed):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("closed"))


class Generator:
    """A share of the connections, driven by the parent over stdin/stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clients: list[Client] = []
        self.channel_of: list[str] = []
        self.pattern = _OUTPUT
        self.expected = 0
        self.latencies: array[float] = array("d")
        self.weights: array[int] = array("I")  # deliveries each latency stands for
        self.received = 0
        self.finished = 0
        self.closed = 0
        self.errors = 0
        self.connect_retries = 0
        self.all_done = asyncio.Event()

    async def connect(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(200)

        async def one(i: int) -> None:
            async with sem:
                for attempt in range(6):
                    try:
                        _, client = await loop.create_connection(
                            lambda: Client(
                                self, f"/ws?token={args.token}", f"127.0.0.1:{args.port}"
                            ),
                            "127.0.0.1",
                            args.port,
                        )
                        await asyncio.wait_for(client.open, 60)
                        break
                    except (OSError, RuntimeError, TimeoutError):
                        # A refused handshake (e.g. 503 while the shared database has no
                        # free connection) is retried, and counted.
                        if attempt == 5:
                            raise
                        self.connect_retries += 1
                        await asyncio.sleep(0.5 * 2**attempt)
                self.clients.append(client)
                self.channel_of.append(f"task:{args.run}-{i % args.channels}")

        await asyncio.gather(*(one(i) for i in range(args.first, args.first + args.count)))

    async def subscribe(self, kind: str, expected: int, timed_every: int) -> None:
        """Every connection onto its task channel (`task`) or onto `tasks` (`tasks`);
        every `timed_every`-th connection is timed, the others read in bursts."""
        self.pattern = _OUTPUT if kind == "task" else _STATUS
        self.expected = expected
        self.latencies = array("d")
        self.weights = array("I")
        self.received = self.finished = 0
        self.all_done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for start in range(0, len(self.clients), 500):
            batch = self.clients[start : start + 500]
            waits: list[asyncio.Future[None]] = []
            for j, client in enumerate(batch):
                client.reset()
                client.timed = (start + j) % timed_every == 0
                client.subscribed = loop.create_future()
                if client.transport is None or client.transport.is_closing():
                    # Dropped by the server (e.g. a ping unanswered while this process
                    # fell behind): its events count as lost.
                    continue
                waits.append(client.subscribed)
                channel = self.channel_of[start + j] if kind == "task" else "tasks"
                if kind == "tasks":
                    client.send_json({"type": "unsubscribe", "channel": self.channel_of[start + j]})
                client.send_json({"type": "subscribe", "channel": channel})
            await asyncio.wait_for(asyncio.gather(*waits), 120)

    async def bursts(self) -> None:
        """Let the untimed connections read every `BURST_S` only, all at once: a read
        costs this process about as much for one frame as for twenty, and 10,000 sockets
        read as frames arrive were more than two generator processes could serve on the
        machine the server shares, which then showed as latency that was not the
        server's. The timed connections read as frames arrive."""
        bulk = [c.transport for c in self.clients if not c.timed and c.transport is not None]
        try:
            while True:
                for t in bulk:
                    t.pause_reading()
                await asyncio.sleep(BURST_S)
                for t in bulk:
                    t.resume_reading()
                await asyncio.sleep(0.005)
        finally:
            for t in bulk:
                with contextlib.suppress(Exception):
                    t.resume_reading()

    async def collect(self, grace: float) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_done.wait(), grace)
        fd, path = tempfile.mkstemp(prefix="ws_scale_lat_")
        with os.fdopen(fd, "wb") as f:
            self.latencies.tofile(f)
            self.weights.tofile(f)
        return {
            "received": self.received,
            "expected": self.expected * len(self.clients),
            "gaps": sum(c.gaps for c in self.clients),
            "duplicates": sum(c.dups for c in self.clients),
            "errors": self.errors,
            "closed": self.closed,
            "latencies": len(self.latencies),
            "latencies_file": path,
        }


async def run_generator(args: argparse.Namespace) -> None:
    gen = Generator(args)
    await gen.connect()
    print(f"CONNECTED {gen.connect_retries}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    bursts: asyncio.Task[None] | None = None
    while line := (await reader.readline()).decode().split():
        if line[0] == "SUB":
            await gen.subscribe(line[1], int(line[2]), int(line[3]))
            if int(line[3]) > 1:
                bursts = asyncio.create_task(gen.bursts())
            print("SUBSCRIBED", flush=True)
        elif line[0] == "COLLECT":
            print("RESULT " + json.dumps(await gen.collect(float(line[1]))), flush=True)
            if bursts is not None:
                bursts.cancel()
                bursts = None
        elif line[0] == "QUIT":
            break
    for c in gen.clients:
        if c.transport is not None:
            c.transport.close()
