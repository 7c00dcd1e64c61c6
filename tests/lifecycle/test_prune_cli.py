"""`dashboard-api prune` as an operator runs it: a real process on a seeded database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    return subprocess.run(
        [sys.executable, "-m", "dashboard_api", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def _figures(line: str) -> tuple[int, int, int]:
    found = re.search(r"(\d+) tasks, (\d+) output chunks and (\d+) status events", line)
    assert found, line
    return int(found[1]), int(found[2]), int(found[3])


def test_prune_prints_what_it_deletes_and_a_dry_run_deletes_nothing(tmp_path: Path) -> None:
    seeded = _run(tmp_path, "seed", "--tasks", "400", "--days", "60", "--random-seed", "7")
    assert seeded.returncode == 0, seeded.stderr

    dry = _run(tmp_path, "prune", "--older-than", "30", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete ")
    would = _figures(dry.stdout)
    assert would[0] > 0
    assert _figures(_run(tmp_path, "prune", "--older-than", "30", "--dry-run").stdout) == would

    done = _run(tmp_path, "prune", "--older-than", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted ")
    assert _figures(done.stdout) == would
    again = _run(tmp_path, "prune", "--older-than", "30")
    assert _figures(again.stdout) == (0, 0, 0)

    # A rebuild would drop the pruned periods' analytics: refused unless asked for.
    refused = _run(tmp_path, "rollups", "rebuild")
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "--discard-pruned" in refused.stderr
    rebuilt = _run(tmp_path, "rollups", "rebuild", "--discard-pruned")
    assert rebuilt.returncode == 0, rebuilt.stderr


@pytest.mark.parametrize("days", ["0", "-3", "nan", "99999999"])
def test_a_bad_age_is_one_line(tmp_path: Path, days: str) -> None:
    result = _run(tmp_path, "prune", "--older-than", days)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--older-than" in lines[0]
