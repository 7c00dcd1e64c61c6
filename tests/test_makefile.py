"""Every make target the Makefile declares or a document names exists, and `make bench`
finds every benchmark."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _phony() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE)
    assert match, "the Makefile declares its targets in .PHONY"
    return match.group(1).split()


def _documented_targets() -> set[str]:
    docs = [ROOT / "README.md", ROOT / "RELIABILITY.md", ROOT / "bench" / "README.md"]
    docs += sorted((ROOT / "docs").rglob("*.md")) if (ROOT / "docs").is_dir() else []
    found: set[str] = set()
    for path in docs:
        found |= set(re.findall(r"`(?:[A-Z_]+=\S+ )*make ([a-z][a-z-]*)", path.read_text()))
    return found


def test_every_declared_and_documented_target_has_a_rule() -> None:
    declared = _phony()
    assert _documented_targets() <= set(declared), _documented_targets() - set(declared)
    for target in declared:
        # -n: print the recipe without running it; "No rule to make target" fails it.
        r = subprocess.run(
            ["make", "-n", "-C", str(ROOT), target],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 0, (target, r.stderr)


def test_make_bench_lists_and_runs_every_benchmark() -> None:
    modules = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))
    listing = subprocess.run(
        [sys.executable, "-m", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout  # fmt: skip
    for name in modules:
        assert re.search(rf"^\s+{name}\s", listing, re.MULTILINE), (name, listing)
        # --help imports the benchmark and parses its options without running it.
        r = subprocess.run(
            [sys.executable, "-m", "bench", name, "--help"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 0, (name, r.stderr)
    unknown = subprocess.run(
        [sys.executable, "-m", "bench", "no_such_bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "Traceback" not in unknown.stderr
