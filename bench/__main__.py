"""`python -m bench` lists the benchmarks; `python -m bench NAME [ARGS]` runs one.

The same as `python -m bench.NAME [ARGS]` (`make bench ARGS="NAME ..."`); what each
measures and its current figures are in bench/README.md.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent


def benchmarks() -> dict[str, str]:
    """Every runnable benchmark module and the first line of its docstring."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def main(argv: list[str]) -> int:
    known = benchmarks()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench NAME [ARGS]   (NAME --help for its options)\n")
        width = max(map(len, known))
        for name, summary in known.items():
            print(f"  {name:<{width}}  {summary}")
        return 0
    name, *rest = argv
    if name not in known:
        print(f"bench: no benchmark {name!r}; one of: {', '.join(known)}", file=sys.stderr)
        return 2
    sys.argv = [f"bench.{name}", *rest]
    runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
