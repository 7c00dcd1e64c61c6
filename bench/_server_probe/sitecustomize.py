"""What a benchmark's server process does inside, whatever its `src`: its garbage
collections and how long the hub's shared writes take to leave it.

`bench.ws_scale` puts this directory first on the server's PYTHONPATH (before and after
alike) with BENCH_SERVER_PROBE naming an output prefix. On SIGUSR2 the figures so far are
written to `$BENCH_SERVER_PROBE.<pid>` as JSON:

- every collection, timed through `gc.callbacks`: per generation the collections, their
  seconds and the longest pause (totals so far), and the objects a full collection walks;
- the lags (since the previous SIGUSR2) from an event's publish (the stamp the bench puts
  at the start of its text) to its arrival in the hub (`Hub.on_message`: Redis and the
  server's reading of it), and to the end of its write to the last member of its channel
  group (`realtime/groups.py`, the path of every caught-up subscriber), with the
  deliveries it stands for; and the most bytes one member's transport held unsent
  (up to 500 members sampled once a second). With the client's receive time of the same events
  this tells the broker's and the server's queues from the socket buffers' and the load
  generator's (the rest);
- the hub's delivery counters (live deliveries, of them through a group's shared write,
  members that left their group for their own queue);
- on SIGUSR1, one full collection is run at once and timed (`forced_full_ms`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import time
from typing import Any

_PREFIX = os.environ.get("BENCH_SERVER_PROBE")


def _stamp(event: Any) -> float | None:
    payload = getattr(event, "payload", None)
    if not isinstance(payload, dict):
        return None
    text = payload.get("input_preview") or payload.get("content")
    if not isinstance(text, str) or "|" not in text:
        return None
    try:
        return float(text.split("|", 1)[0])
    except ValueError:
        return None


class WriteLag:
    """Wraps `Group._write_slice` (when the server's src has it) to time shared writes."""

    def __init__(self) -> None:
        self.lags: list[tuple[float, int]] = []  # (ms, deliveries)
        self.arrivals: list[float] = []  # ms
        self.buffered_max = 0
        self.hub: Any = None
        self._pending: dict[int, list[float]] = {}
        self._sampled = 0.0

    def install(self) -> None:
        try:
            from dashboard_api.realtime.groups import Group
        except ImportError:
            return
        original = getattr(Group, "_write_slice", None)
        if original is None:
            return
        probe = self
        self._install_arrivals()

        def _write_slice(group: Any, targets: list[Any], start: int, end: int, data: bytes) -> None:
            if start == 0:
                stamps = [_stamp(e) for e in group.events[: end - group.base]]
                probe._pending[id(group)] = [s for s in stamps if s is not None]
            original(group, targets, start, end, data)
            if not group.flushing:  # the last slice of this write is done
                probe.done(group, targets)

        Group._write_slice = _write_slice  # type: ignore[method-assign,assignment]

    def _install_arrivals(self) -> None:
        try:
            from dashboard_api.realtime.hub import Hub
        except ImportError:
            return
        original = Hub.on_message
        arrivals = self.arrivals
        marks = (b'"input_preview":"', b'"content":"')

        def on_message(hub: Any, channel: str, data: bytes) -> None:
            for mark in marks:
                at = data.find(mark)
                if at >= 0:
                    at += len(mark)
                    end = data.find(b"|", at, at + 32)
                    with contextlib.suppress(ValueError):
                        arrivals.append((time.time() - float(data[at:end])) * 1000)
                    break
            original(hub, channel, data)

        Hub.on_message = on_message  # type: ignore[method-assign,assignment]

    def done(self, group: Any, targets: list[Any]) -> None:
        now = time.time()
        self.hub = group.hub
        for stamp in self._pending.pop(id(group), ()):
            self.lags.append(((now - stamp) * 1000, len(targets)))
        if now - self._sampled >= 1.0:
            # Up to 500 members a second (a stride over them): 10,000 at each write would
            # stop the server's loop for milliseconds.
            self._sampled = now
            for sub in targets[:: max(1, len(targets) // 500)]:
                with contextlib.suppress(Exception):
                    unsent = sub.sink._proto.transport.get_write_buffer_size()
                    self.buffered_max = max(self.buffered_max, unsent)

    def take(self) -> dict[str, Any]:
        lags, self.lags = self.lags, []
        arrivals = self.arrivals[:]
        self.arrivals.clear()
        buffered, self.buffered_max = self.buffered_max, 0
        hub = self.hub
        counters = {
            name: getattr(hub, name, 0)
            for name in ("events_delivered", "events_delivered_shared", "group_leaves")
        }
        return {
            "write_lags": lags,
            "arrival_lags": arrivals,
            "buffered_max": buffered,
            "hub": counters,
        }


def _install(prefix: str) -> None:
    counts = [0, 0, 0]
    seconds = [0.0, 0.0, 0.0]
    longest = [0.0, 0.0, 0.0]
    started = [0.0]
    writes = WriteLag()
    writes.install()

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        g = int(info["generation"])
        counts[g] += 1
        seconds[g] += took
        longest[g] = max(longest[g], took)

    forced: list[float] = []

    def collect(*_: object) -> None:
        # `--full-gc`: one full collection now, timed (its pause is also in `longest`).
        t = time.perf_counter()
        gc.collect()
        forced.append((time.perf_counter() - t) * 1000)

    def dump(*_: object) -> None:
        data = {
            "forced_full_ms": forced[:],
            "collections": counts,
            "seconds": seconds,
            "longest": longest,
            # what a full collection walks (frozen objects are not among them)
            "tracked": len(gc.get_objects()),
            **writes.take(),
        }
        path = f"{prefix}.{os.getpid()}"
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR2, dump)
    signal.signal(signal.SIGUSR1, collect)


if _PREFIX:
    _install(_PREFIX)
