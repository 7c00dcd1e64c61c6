"""A real `dashboard-api serve` process for the browser tests, which can be killed and
started again on the same port and database (the log-resume test)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`dashboard-api serve` on SQLite in `workdir`; stdout and stderr go to files there."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.db_url = f"sqlite+aiosqlite:///{workdir / 'dashboard.db'}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
        self.env.update(
            DASHBOARD_DATABASE_URL=self.db_url,
            DASHBOARD_LOG_LEVEL="WARNING",
            DASHBOARD_TOKEN_CACHE_SECONDS="0",  # a revoked token is refused at once
            PYTHONUNBUFFERED="1",
            **env,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_token = ""
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        """Run a `dashboard-api` command on this server's database; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "dashboard_api", *args],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return done.stdout.decode()

    def token(self, user: str, role: str) -> str:
        return self.cli("token", "create", "--user", user, "--role", role).strip().splitlines()[-1]

    def start(self) -> None:
        self.starts += 1
        out = self.workdir / f"serve-{self.starts}.out"
        err = self.workdir / f"serve-{self.starts}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dashboard_api", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.workdir,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, err.read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError(f"serve did not start: {err.read_text()[-3000:]}")
        for line in out.read_text().splitlines():
            if "admin token:" in line:
                self.admin_token = line.split()[-1]

    def kill(self) -> None:
        """End the process at once, as a crash would (no graceful close of the sockets)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kwargs,
        )
