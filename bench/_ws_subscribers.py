"""The subscriber side of bench.ws_fanout (a child process, `--role subscribers`): many
WebSocket connections on a minimal asyncio client that parses task_output frames, checks
every seq for gaps and repeats, and records the end-to-end latency of each delivery from
the producer's timestamp in the chunk."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import tempfile
import time
from array import array

import orjson

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
    reads0 = syscalls(os.getpid())[0]
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
        "reads": syscalls(os.getpid())[0] - reads0,
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


def syscalls(pid: int) -> tuple[int, int]:
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
