"""Figures the hardening tests measured (examples tried, faults survived).

Printed in the terminal summary of every run, so that CI logs carry them (see
RELIABILITY.md); tests/conftest.py carries each line from an xdist worker to the controller.
"""

from __future__ import annotations

FIGURE_LINES: list[str] = []
