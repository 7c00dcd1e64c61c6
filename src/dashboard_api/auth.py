"""Bearer tokens: generation, hashing, roles, and a short-lived cache of resolved tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from dashboard_api.bounded import BoundedCache

Role = Literal["admin", "user", "agent"]
ROLES: tuple[Role, ...] = ("admin", "user", "agent")
TOKEN_PREFIX = "dash_"  # noqa: S105 (a marker, not a secret)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, the user it speaks for, and its one role."""

    token_id: str
    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def generate_token() -> str:
    """A new random token (256 bits of entropy)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex digest: tokens are random, so a fast hash cannot be brute-forced."""
    return hashlib.sha256(token.encode()).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two digests."""
    return hmac.compare_digest(a.encode(), b.encode())


class TokenCache:
    """Resolved tokens by digest for a few seconds, so that a request costs no token query.

    A revocation takes effect on every replica within `ttl` seconds.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._entries: BoundedCache[str, tuple[float, Principal | None]] = BoundedCache(max_entries)

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, digest: str, principal: Principal | None) -> None:
        if self.ttl <= 0:
            return
        self._entries.put(digest, (time.monotonic() + self.ttl, principal))

    def clear(self) -> None:
        self._entries.clear()
