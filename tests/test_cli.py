"""The `dashboard-api` command as a new user meets it: real processes on a fresh database.

Every command that needs the database works on a fresh file (it migrates first, as `serve`
does), and an expected failure (a wrong setting, a database that is down, a port taken) is
one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "dashboard_api", *args],
        cwd=cwd, env=clean, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_every_database_command_works_on_a_fresh_file(tmp_path: Path) -> None:
    """Run in a new directory, as after a clone: the default ./dashboard.db does not exist."""
    created = _run(tmp_path, "token", "create", "--user", "alice", "--role", "user")
    assert created.returncode == 0, created.stderr
    assert "Traceback" not in created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("dash_")
    assert (tmp_path / "dashboard.db").exists()

    listed = _run(tmp_path, "token", "list")
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout

    token_id = listed.stdout.split()[0]
    assert _run(tmp_path, "token", "revoke", token_id).returncode == 0
    missing = _run(tmp_path, "token", "revoke", "no-such-token")
    assert "no-such-token" in _one_line_error(missing)

    for args in (("migrate",), ("seed", "--tasks", "5", "--days", "2"), ("rollups", "rebuild")):
        fresh = tmp_path / args[0]
        fresh.mkdir()
        result = _run(fresh, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "DASHBOARD_DATABASE_URL"),
        ("mysql://db/x", "DASHBOARD_DATABASE_URL"),
        ("sqlite+aiosqlite:///no/such/directory/x.db", "directory does not exist"),
        ("postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/x", "cannot reach the database"),
    ],
)
def test_a_database_that_cannot_be_used_is_one_line(
    tmp_path: Path, url: str, expected: str
) -> None:
    line = _one_line_error(_run(tmp_path, "token", "list", DASHBOARD_DATABASE_URL=url))
    assert expected in line
    assert "hunter2" not in line  # the password is not echoed


def test_an_invalid_setting_is_one_line_without_its_value(tmp_path: Path) -> None:
    line = _one_line_error(_run(tmp_path, "migrate", DASHBOARD_DATABASE_POOL_SIZE="many"))
    assert "DASHBOARD_DATABASE_POOL_SIZE" in line
    assert "many" not in line
    assert not (tmp_path / "dashboard.db").exists()


def test_serve_on_a_taken_port_fails_before_touching_the_database(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(tmp_path, "serve", "--port", str(port), "--demo-if-empty")
    line = _one_line_error(result)
    assert str(port) in line
    assert "admin token" not in result.stdout
    # Nothing was created, so the next `make run` still starts in demo mode.
    assert not (tmp_path / "dashboard.db").exists()
