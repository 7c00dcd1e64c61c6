"""A real uvicorn process of the service for the benchmarks: started on a port with the
given environment (optionally serving another checkout's `src`, for before/after runs, and
under cProfile when BENCH_PROFILE names an output file), waited for, and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence

import httpx


def start_server(
    port: int,
    env: dict[str, str],
    src: str | None,
    *,
    uvicorn_args: Sequence[str] = (),
    profile: bool = True,
) -> subprocess.Popen[bytes]:
    """uvicorn on `port`; `src`: serve another checkout's `src` (before/after runs);
    `uvicorn_args`: more of uvicorn's options (e.g. `--workers 2`); `profile=False` never
    wraps it in cProfile (one profile file cannot hold several worker processes)."""
    if src:
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))}
    output = os.environ.get("BENCH_PROFILE")
    wrapper = ["-m", "cProfile", "-o", output] if output and profile else []
    return subprocess.Popen(
        [
            sys.executable,
            *wrapper,
            "-m",
            "uvicorn",
            "dashboard_api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--ws-per-message-deflate",
            "false",
            *uvicorn_args,
        ],
        env=env,
    )


async def wait_healthy(port: int, *, timeout: float = 15.0) -> None:
    """Wait until the server answers `GET /api/health`."""
    async with httpx.AsyncClient() as http:
        for _ in range(int(timeout / 0.05)):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/api/health")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("the server did not start")


def stop_server(server: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGINT, as uvicorn expects (a cProfile wrapper then writes its profile; SIGTERM
    would kill the wrapper first), then a kill after `grace` seconds."""
    server.send_signal(2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(grace)
    if server.poll() is None:
        server.kill()
        server.wait()
