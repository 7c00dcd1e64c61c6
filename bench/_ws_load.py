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
import socket
import sys
import tempfile
import time
from array import array
from typing import Any

import orjson

# The untimed connections of the `tasks` phase are woken only once this many bytes wait in
# their socket (SO_RCVLOWAT, see `Generator.hold`): ~0.2-0.3 s of the channel at 50
# changes/s.
HOLD_BYTES = 8192
# The fields a generator reads from an event frame: an ordinal (a task_output's seq, or
# the number in a status event's task_id) and the publish time at the start of its text.
_OUTPUT = re.compile(rb'"seq":(\d+),.*?"content":"(\d+\.\d+)\|', re.S)
# A whole status frame (header 0x81 0x7E + 16-bit length: these frames are 126-65535
# bytes), up to the `channel` key the bench puts last: the per-frame path of `tasks`
# frames that do not follow on (repeats, gaps, a ping among them).
_STATUS = re.compile(
    rb'\x81\x7e..\{"type":"task_status",.*?"task_id":"s(\d+)",'
    rb'.*?"input_preview":"(\d+\.\d+)\|.*?"channel":"tasks"\}',
    re.S,
)
_STATUS_HEAD = b'{"type":"task_status",'
_TASK_ID = b'"task_id":"s'
_PREVIEW = b'"input_preview":"'


def status_ordinals(n: int) -> list[bytes]:
    """What follows `"task_id":"s` in the status event of each ordinal up to `n` (index =
    ordinal), then a token no ordinal starts with, which ends `Client._status_run`."""
    return [b'%d"' % i for i in range(n + 1)] + [b"-"]


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
        # Whether its deliveries are timed; the others are held (`Generator.hold`).
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
        pos = self._status_run(data, now)
        if pos < len(data):
            self._status_frames(data[pos:] if pos else data, now)

    def _status_run(self, data: bytes, now: float) -> int:
        """The `tasks` phase's common case (500,000 frames/s at the defaults): walk the
        frame headers from the start of `data` while each frame is a whole status frame
        whose ordinal is the next one due; returns where the run stopped. A frame is
        checked by one prefix comparison in C: its payload must start with the status
        events' common start up to and including `"task_id":"s`, then `<n>"` for the
        ordinal n due (`Generator.tokens`; the first frame, or one whose start differs,
        is checked by a search for the ordinal instead). No object is made per frame; a
        ping is answered on the way. The rest (a repeat, a gap, a partial frame, any
        other message) takes the per-frame path. The read's oldest frame is timed for the
        whole read (an upper bound for the others)."""
        gen = self.gen
        tokens = gen.tokens
        o = self.last + 1
        size = len(data)
        pos = 0
        find = data.find
        startswith = data.startswith
        while size - pos >= 4:
            if data[pos] != 0x81 or data[pos + 1] != 0x7E:
                if data[pos] == 0x89 and data[pos + 1] < 126:
                    # The server's keepalive ping (every socket's, every 20 s): answered
                    # in the run, which would otherwise leave the rest of the read to the
                    # per-frame path (a held socket's read is ~15-40 KB).
                    end = pos + 2 + data[pos + 1]
                    if end > size:
                        break
                    self._send(0xA, data[pos + 2 : end])
                    pos = end
                    continue
                break
            end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
            if end > size:
                break
            # (Both token lists end with one no frame starts with: past the phase's last
            # event the run stops.)
            if not startswith(tokens[o], pos + 4, end):
                if not startswith(_STATUS_HEAD, pos + 4):
                    break
                i = find(_TASK_ID, pos + 4, end)
                if i < 0 or not startswith(gen.ordinals[o], i + 12):
                    break
                if tokens is gen.ordinals:  # not learnt yet in this phase
                    tokens = gen.learn(data[pos + 4 : i + 12])
            o += 1
            pos = end
        n = o - 1 - self.last
        if n:
            self.last = o - 1
            if self.timed:
                k = find(_PREVIEW, 4) + len(_PREVIEW)
                self._count((now - float(data[k : find(b"|", k)])) * 1000, n)
            else:
                self._received(n)
        return pos

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
        self.ordinals = self.tokens = status_ordinals(0)  # see `expect_ordinals`
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

    def expect_ordinals(self, n: int) -> None:
        """A phase of `n` status events: what follows `"task_id":"s` in each (`ordinals`),
        and the frame checks, to be learnt from the phase's first frame (`learn`)."""
        self.ordinals = self.tokens = status_ordinals(n)

    def learn(self, lead: bytes) -> list[bytes]:
        """The status events' payloads start with `lead` (checked on a frame: the
        `task_status` type, the fields before `task_id`, then `"task_id":"s`): from now
        on a frame is checked by one comparison with `lead` + its ordinal's `<n>"`."""
        self.tokens = [lead + ordinal for ordinal in self.ordinals]
        return self.tokens

    async def subscribe(self, kind: str, expected: int, timed_every: int) -> None:
        """Every connection onto its task channel (`task`) or onto `tasks` (`tasks`);
        every `timed_every`-th connection is timed, the others are held (`hold`)."""
        self.pattern = _OUTPUT if kind == "task" else _STATUS
        self.expected = expected
        self.expect_ordinals(expected if kind == "tasks" else 0)
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

    def hold(self, nbytes: int) -> None:
        """Have the untimed connections' sockets wake this process only once `nbytes`
        wait in them (SO_RCVLOWAT; 1 releases them). A read costs this process about as
        much for one frame as for twenty, and 10,000 sockets read as frames arrive were
        more than two generator processes could serve on the machine the server shares,
        which then showed as latency that was not the server's. The kernel holds the
        frames meanwhile (~0.3 s of the `tasks` channel); pausing and resuming each
        socket's reading would cost two epoll changes per socket and pause. The timed
        connections read as frames arrive."""
        for c in self.clients:
            t = c.transport
            if c.timed or t is None or t.is_closing():
                continue
            with contextlib.suppress(OSError):
                t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)

    async def collect(self, grace: float) -> dict[str, Any]:
        self.hold(1)  # the last frames of the phase, fewer than HOLD_BYTES
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
    while line := (await reader.readline()).decode().split():
        if line[0] == "SUB":
            await gen.subscribe(line[1], int(line[2]), int(line[3]))
            if int(line[3]) > 1:
                gen.hold(HOLD_BYTES)
            print("SUBSCRIBED", flush=True)
        elif line[0] == "COLLECT":
            print("RESULT " + json.dumps(await gen.collect(float(line[1]))), flush=True)
        elif line[0] == "QUIT":
            break
    for c in gen.clients:
        if c.transport is not None:
            c.transport.close()
