"""Garbage-collection pauses of a benchmark's server process, whatever its `src`.

`bench.ws_scale` puts this directory first on the server's PYTHONPATH (before and after
alike) with BENCH_GC_PROBE naming an output prefix: every collection is timed through
`gc.callbacks`, and on SIGUSR2 the totals so far (per generation: collections, seconds,
longest pause) and the number of objects a full collection walks are written to
`$BENCH_GC_PROBE.<pid>` as JSON.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from typing import Any

_PREFIX = os.environ.get("BENCH_GC_PROBE")


def _install(prefix: str) -> None:
    counts = [0, 0, 0]
    seconds = [0.0, 0.0, 0.0]
    longest = [0.0, 0.0, 0.0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        g = int(info["generation"])
        counts[g] += 1
        seconds[g] += took
        longest[g] = max(longest[g], took)

    def dump(*_: object) -> None:
        data = {
            "collections": counts,
            "seconds": seconds,
            "longest": longest,
            # what a full collection walks (frozen objects are not among them)
            "tracked": len(gc.get_objects()),
        }
        path = f"{prefix}.{os.getpid()}"
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR2, dump)


if _PREFIX:
    _install(_PREFIX)
