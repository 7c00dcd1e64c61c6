"""Real servers and real dependencies for the hardening tests.

- `threaded_server`: the app under uvicorn on a loopback port, in a thread of its own
  (for sync hypothesis tests that drive it over real sockets);
- `uvicorn_process`: the app as a uvicorn subprocess (what `serve` runs), stderr captured;
- `OwnPostgres` / `OwnRedis`: a throw-away PostgreSQL cluster (initdb/pg_ctl) and a
  redis-server of the test's own, on spare ports, that a test may stop and start. The
  shared servers on 5432/6379 are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from dashboard_api.app import create_app
from dashboard_api.db.engine import Database
from dashboard_api.realtime import uvicorn_ws_options
from dashboard_api.services.tokens import create_token
from dashboard_api.settings import Settings
from dashboard_api.timeutil import SystemClock
from tests.conftest import (
    FIGURE_LINES,
    REDIS_URL,
    Backend,
    _truncate,
    require_services,
    run_sync,
)

__all__ = ["FIGURE_LINES"]

ROLE_USERS = (
    ("admin", "admin", "root"),
    ("user", "user", "alice"),
    ("other_user", "user", "bob"),
    ("agent", "agent", "agent-1"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


async def _create_tokens(url: str) -> dict[str, str]:
    db = Database(url)
    out: dict[str, str] = {}
    try:
        async with db.write() as session:
            for name, role, user in ROLE_USERS:
                out[name], _ = await create_token(
                    session,
                    user_id=user,
                    role=role,  # type: ignore[arg-type]
                    now=SystemClock().now(),
                )
    finally:
        await db.dispose()
    return out


def create_tokens(url: str) -> dict[str, str]:
    """A token of every role (and a second user) stored in the database at `url`."""
    result: dict[str, str] = run_sync(_create_tokens(url))
    return result


@pytest.fixture(params=("sqlite", "postgres"))
def sync_backend(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[Backend]:
    """Like `backend`, for sync tests: SQLite + memory broker, or PostgreSQL + Redis."""
    prefix = f"dashhard:{os.urandom(6).hex()}:"
    if request.param == "sqlite":
        path = tmp_path / "dashboard.db"
        shutil.copyfile(sqlite_template, path)
        yield Backend("sqlite", f"sqlite+aiosqlite:///{path}", None, prefix)
        return
    require_services()
    url = request.getfixturevalue("pg_url")
    run_sync(_truncate(url))
    yield Backend("postgres", url, REDIS_URL, prefix)
    from tests.conftest import _flush_redis_prefix

    run_sync(_flush_redis_prefix(prefix))


@contextlib.contextmanager
def threaded_server(settings: Settings) -> Iterator[str]:
    """Serve `create_app(settings)` with uvicorn in a thread; yields the base URL."""
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
        **uvicorn_ws_options(settings),
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        # A server that does not stop would be left running (daemon thread) with its loop's
        # tasks and SQLite threads, failing a later test with "Event loop is closed".
        assert not thread.is_alive(), "the threaded uvicorn server did not stop within 20 s"


class UvicornProcess:
    """`uvicorn dashboard_api.app:create_app --factory` as a subprocess."""

    def __init__(self, env: dict[str, str], *, port: int | None = None, log: Path) -> None:
        self.port = port or free_port()
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> UvicornProcess:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "dashboard_api.app:create_app", "--factory",
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--ws-per-message-deflate", "false", *extra,
                ],
                env={**os.environ, **self.env},
                cwd=self.log.parent,  # no stray .env file is read
                stdout=err,
                stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not answer: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


class OwnPostgres:
    """A throw-away PostgreSQL cluster in a temp dir, on a spare port (trust auth)."""

    def __init__(self) -> None:
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="dash-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as `postgres`
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w",
            "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """Stop now (`immediate`: no checkpoint, connections cut, as in a crash)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """`redis-server --port <spare> --save ''` that a test may stop and restart."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dash-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def base_env(database_url: str, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a subprocess server: our settings only, nothing from a .env file."""
    env = {
        "DASHBOARD_DATABASE_URL": database_url,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
        "DASHBOARD_LOG_LEVEL": "INFO",
    }
    if redis_url:
        env["DASHBOARD_REDIS_URL"] = redis_url
    env.update(extra)
    return env
