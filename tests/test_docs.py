"""The documents are entry points that hold: their links resolve, every `docs/api.md §N`
cited in code or docs has its section, and nothing narrates history by session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
TEXT_SUFFIXES = {".md", ".py", ".js", ".toml", ".cfg", ".ini", ".txt", ".html", ".css"}


def _files(suffixes: set[str]) -> Iterator[Path]:
    for path in ROOT.rglob("*"):
        skipped = SKIP_DIRS.intersection(path.relative_to(ROOT).parts)
        if path.is_file() and path.suffix in suffixes and not skipped:
            yield path


def test_relative_links_in_markdown_resolve() -> None:
    broken = []
    for doc in _files({".md"}):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_cited_section_of_the_api_page_exists() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\.", api, re.MULTILINE)}
    cited: dict[int, str] = {}
    for path in _files(TEXT_SUFFIXES):
        text = path.read_text(errors="replace")
        assert not re.search(r"(?<![\w/])API\.md", text), (
            f"{path.relative_to(ROOT)} cites docs/api.md, which is not in the repository: "
            "cite docs/api.md (or /docs for the generated reference)"
        )
        for first, last in re.findall(r"docs/api\.md §(\d+)(?:[\u2013-](\d+))?", text):
            for n in range(int(first), int(last or first) + 1):
                cited.setdefault(n, str(path.relative_to(ROOT)))
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, missing


def test_nothing_narrates_history_by_session() -> None:
    narrating = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _files(TEXT_SUFFIXES)
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if re.search(r"session [0-9]|session-[0-9]", line, re.IGNORECASE)
    ]
    assert not narrating, narrating
