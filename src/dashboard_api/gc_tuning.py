"""The garbage collector of a serving process: keep its full collections short.

CPython's full (generation 2) collection walks every container object that is tracked,
with the event loop stopped meanwhile. In a replica, most of them are what the imports and
the app's construction left (FastAPI, SQLAlchemy, pydantic models, compiled statements):
hundreds of thousands of objects that live as long as the process. Walked at every full
collection, they made each one a pause of tens of milliseconds on a quiet 2-core machine
(hundreds when loaded) in which no socket was written and no request answered: the tail
of `bench.ws_fanout`'s publish -> receive latency.

`freeze_after_start` moves what is alive once the app has started into the permanent
generation (`gc.freeze`), which collections never walk; those objects are still freed by
reference counting as usual. Objects made later (connections, requests) are collected
as before. What a full collection still walks is then mostly the open sockets' objects
(coroutines, protocol objects, subscriptions): the realtime layer keeps an open session's
tracked objects down (`tests/realtime/test_gc_footprint.py`, bench `ws_scale`).

The young generation is collected less often than CPython's default (every 700 net
allocations of containers): a request that reads a batch of spans or rows holds
thousands of objects at once, and at 700 each of them was walked by one or two young
collections before the request freed it by reference counting anyway (about a tenth of
`bench.otlp`'s server CPU). At `YOUNG_THRESHOLD` most such objects are gone before a
young collection comes; each one walks more objects (a millisecond or two, well under
what a full collection took before the freeze).
"""

from __future__ import annotations

import gc

_frozen = False
YOUNG_THRESHOLD = 10_000


def freeze_after_start() -> None:
    """Collect, then freeze everything alive now (once per process: tests build many
    apps in one process, and only the first start is the process's own)."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
