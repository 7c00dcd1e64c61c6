"""Money is stored as integer micro-dollars; the API speaks JSON numbers of USD."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICROS_PER_USD = 1_000_000


def usd_to_micros(value: Decimal | float | int | str) -> int:
    """Exact conversion (floats go through their shortest repr, so 0.1 is 100000)."""
    dec = value if isinstance(value, Decimal) else Decimal(str(value))
    return int((dec * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def micros_to_usd(micros: int) -> float:
    """The nearest float to the exact micro-dollar amount (what a JSON number can carry)."""
    # int / int is correctly rounded in Python (the nearest float to the exact quotient),
    # and ten times cheaper than through Decimal, which gives the same below 10**22.
    return micros / MICROS_PER_USD
