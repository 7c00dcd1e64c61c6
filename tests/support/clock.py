"""A clock that moves only when the test moves it (the app takes it as `clock=`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    """Time stands still until `advance` (so that tests can make ties on purpose)."""

    at: datetime = T0

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float = 0, *, ms: float = 0) -> datetime:
        self.at += timedelta(seconds=seconds, milliseconds=ms)
        return self.at
