"""Demo mode: sample data and simulated agents (see `start_demo`)."""

from __future__ import annotations

import asyncio
from typing import Any


async def start_demo(ctx: Any) -> list[asyncio.Task[Any]]:
    """Seed sample data when the database has no tasks, then start simulated agents."""
    return []
