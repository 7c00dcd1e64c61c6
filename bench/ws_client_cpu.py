"""CPU per delivery of the `ws_scale` load generator's `tasks` parse: the same reads
replayed through this checkout's client and another's, in one process, alternating.

    python -m bench.ws_client_cpu --before /tmp/before/bench/_ws_load.py

`bench.ws_scale` gives the generators' CPU per delivery too, but on the shared 2-core
machine that figure moves with how many frames each read carries, which depends on how
far the server is behind. Here every variant gets identical reads (status frames as the
bench publishes them, N per read, a keepalive ping among some) and each is timed with
`time.process_time`, best of `--rounds`. Only the parse of what a socket read returns
is measured, not the syscalls (`ws_scale`'s `deliveries_per_client_read` counts those).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import time
from types import ModuleType
from typing import Any

import orjson

from dashboard_api.realtime.events import ws_text_frame

HERE = os.path.dirname(os.path.abspath(__file__))
# A task summary as the list returns it (the bench's status events carry one).
TEMPLATE: dict[str, Any] = {
    "task_id": "b123456-0",
    "conversation_id": None,
    "user_id": None,
    "flow_id": None,
    "agent_type": "bench",
    "agent_id": None,
    "status": "running",
    "source": "api",
    "input_preview": "bench",
    "output_preview": None,
    "error": None,
    "failure_reason": None,
    "created_at": "2026-12-08T01:00:00.000Z",
    "started_at": "2026-12-08T01:00:00.000Z",
    "completed_at": None,
    "updated_at": "2026-12-08T01:00:00.000Z",
    "duration_ms": None,
    "cost_usd": None,
    "tokens_in": None,
    "tokens_out": None,
    "model": None,
    "tags": [],
    "metadata": {},
    "output_seq": 0,
}
# (frames per read, timed, a ping every this many reads (0: none)): a timed socket reads
# each server write (~8 frames on the quiet machine), a held one ~15-40 frames.
CASES = ((8, True, 0), (15, False, 0), (40, False, 0), (40, False, 25))


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _reads(frames: list[bytes], per_read: int, ping_every: int) -> list[bytes]:
    reads = []
    for k in range(0, len(frames), per_read):
        chunk = b"".join(frames[k : k + per_read])
        if ping_every and (k // per_read) % ping_every == 0:
            chunk = b"\x89\x04ping" + chunk
        reads.append(chunk)
    return reads


def _once(module: ModuleType, reads: list[bytes], n: int, timed: bool) -> float:
    """CPU seconds per delivery for one pass; fails unless every frame was counted once."""

    async def run() -> float:
        gen = module.Generator(argparse.Namespace())
        client = module.Client(gen, "/ws", "127.0.0.1")
        client.transport = _Transport()
        client.handshake_done = True
        client.timed = timed
        gen.clients = [client]
        gen.pattern = module._STATUS
        gen.expected = n
        if hasattr(gen, "expect_ordinals"):
            gen.expect_ordinals(n)
        t = time.process_time()
        for data in reads:
            client.data_received(data)
        took = time.process_time() - t
        if (client.count, client.dups, client.gaps) != (n, 0, 0):
            raise SystemExit(f"{module.__name__}: {client.count} of {n} counted")
        return took / n

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="another checkout's bench/_ws_load.py")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    variants = {
        "before": _load(args.before, "before_ws_load"),
        "current": _load(
            os.environ.get("WS_LOAD_CURRENT", os.path.join(HERE, "_ws_load.py")), "current_ws_load"
        ),
    }
    sent = time.time()
    frames = [
        ws_text_frame(
            orjson.dumps(
                {
                    "type": "task_status",
                    **TEMPLATE,
                    "task_id": f"s{i}",
                    "input_preview": f"{sent:.6f}|status change {i}",
                    "channel": "tasks",
                }
            )
        )
        for i in range(1, args.frames + 1)
    ]
    results = []
    for per_read, timed, ping_every in CASES:
        reads = _reads(frames, per_read, ping_every)
        best = {name: float("inf") for name in variants}
        for _ in range(args.rounds):
            for name, module in variants.items():
                best[name] = min(best[name], _once(module, reads, args.frames, timed))
        row = {
            "frames_per_read": per_read,
            "timed": timed,
            "ping_every_reads": ping_every,
            "frame_bytes": len(frames[0]),
            **{f"{name}_us_per_delivery": round(v * 1e6, 3) for name, v in best.items()},
            "ratio": round(best["current"] / best["before"], 2),
        }
        results.append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
