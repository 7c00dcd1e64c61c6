"""The `bench.ws_scale` load generator's client counts what it is sent exactly.

Its `tasks` path checks whole receive buffers in C (`Client._status_run`) and hands
anything that does not follow on to the per-frame path: whatever order the frames come
in and wherever the reads split them, every frame is counted once, a repeat as a
duplicate, a missing ordinal as a gap, and a ping is answered.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

import orjson
from bench._ws_load import _STATUS, Client, Generator
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard_api.realtime.events import ws_text_frame

# A task summary as the service publishes it on `tasks` (bench.ws_scale._status_event).
_TEMPLATE = {
    "task_id": "t-1",
    "agent_type": "bench",
    "status": "running",
    "input_preview": "bench",
    "metadata": {"note": '"task_id":"s9"'},  # the key's text inside a value: not an ordinal
    "created_at": "2026-01-01T00:00:00.000Z",
}


def _status_frame(i: int, sent: float) -> bytes:
    event = {
        "type": "task_status",
        **_TEMPLATE,
        "task_id": f"s{i}",
        "input_preview": f"{sent:.6f}|status change {i}",
        "channel": "tasks",
    }
    return ws_text_frame(orjson.dumps(event))


_PING = b"\x89\x04ping"


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def _client(expected: int, timed: bool) -> tuple[Generator, Client, _Transport]:
    gen = Generator(argparse.Namespace())
    client = Client(gen, "/ws", "127.0.0.1")
    transport = _Transport()
    client.transport = transport  # type: ignore[assignment]
    client.handshake_done = True
    client.timed = timed
    gen.clients = [client]
    gen.pattern = _STATUS
    gen.expected = expected
    gen.expect_ordinals(expected)
    return gen, client, transport


def _reference(ordinals: list[int]) -> tuple[int, int, int]:
    """(counted, duplicates, gaps) of a stream: what a frame-by-frame reader finds."""
    last = counted = dups = gaps = 0
    for o in ordinals:
        if o <= last:
            dups += 1
            continue
        gaps += o - last - 1
        last = o
        counted += 1
    return counted, dups, gaps


@st.composite
def _streams(draw: Any) -> tuple[list[int | None], list[int], bool]:
    """Ordinals 1..n in order with some repeated, skipped or swapped, pings (None)
    among them, and the points where the reads split the bytes."""
    n = draw(st.integers(1, 40))
    stream: list[int | None] = []
    i = 1
    while i <= n:
        action = draw(st.sampled_from(["next"] * 6 + ["repeat", "skip", "swap", "ping"]))
        if action == "repeat" and stream:
            stream.append(draw(st.sampled_from([o for o in stream if o is not None] or [i])))
        elif action == "skip":
            i += 1
        elif action == "swap" and i < n:
            stream += [i + 1, i]
            i += 2
        elif action == "ping":
            stream.append(None)
        else:
            stream.append(i)
            i += 1
    size = sum(560 if o is not None else 6 for o in stream)
    cuts = draw(st.lists(st.integers(1, max(1, size - 1)), max_size=12))
    return stream, cuts, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(_streams())
def test_status_frames_are_counted_once_in_order(
    case: tuple[list[int | None], list[int], bool],
) -> None:
    stream, cuts, timed = case

    async def run() -> None:
        sent = time.time() - 0.05
        expected = max([o for o in stream if o is not None] + [1])
        gen, client, transport = _client(expected, timed)
        data = b"".join(_PING if o is None else _status_frame(o, sent) for o in stream)
        bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
        for a, b in itertools.pairwise(bounds):
            if b > a:
                client.data_received(data[a:b])
        counted, dups, gaps = _reference([o for o in stream if o is not None])
        assert (client.count, client.dups, client.gaps) == (counted, dups, gaps)
        assert gen.received == counted
        assert not client.buf  # every frame was whole by the last read
        pongs = [w for w in transport.written if w[:1] == b"\x8a"]
        assert len(pongs) == stream.count(None)
        if timed and counted:
            # Every delivery is timed (a read's oldest frame stands for the read).
            assert sum(gen.weights) == counted
            assert all(0 < ms < 60_000 for ms in gen.latencies)
        else:
            assert not gen.latencies

    asyncio.run(run())


async def test_a_long_in_order_stream_takes_the_whole_buffer_path() -> None:
    """Frames that follow on are counted by the C path: 500 frames in reads of 20."""
    gen, client, transport = _client(500, timed=True)
    sent = time.time()
    frames = [_status_frame(i, sent) for i in range(1, 501)]
    walked: list[int] = []
    original = client._status_frames

    def spy(data: bytes, now: float) -> None:
        walked.append(len(data))
        original(data, now)

    client._status_frames = spy  # type: ignore[method-assign]
    for k in range(0, 500, 20):
        # The server's keepalive pings fall among the frames: answered on the way.
        ping = _PING if k % 100 == 40 else b""
        client.data_received(
            b"".join(frames[k : k + 10]) + ping + b"".join(frames[k + 10 : k + 20])
        )
    assert (client.count, client.dups, client.gaps, client.done) == (500, 0, 0, True)
    assert walked == []
    assert transport.written == [b"\x8a\x84\0\0\0\0ping"] * 5
    assert len(gen.latencies) == 25
    assert sum(gen.weights) == 500
