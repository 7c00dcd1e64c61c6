"""The signature of webhook notifications (docs/api.md §15).

`X-Dashboard-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`, keyed with the
channel's secret; `X-Dashboard-Timestamp` carries the timestamp (Unix seconds), so that a
receiver can refuse replays older than it tolerates.
"""

from __future__ import annotations

import hashlib
import hmac


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The header value: `sha256=` and the hex HMAC of `{timestamp}.{body}`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def notification_headers(
    *, alert_id: str, timestamp: str, body: bytes, secret: str | None
) -> dict[str, str]:
    """The headers of one webhook POST."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "dashboard-api-alerts",
        "X-Dashboard-Alert-Id": alert_id,
        "X-Dashboard-Timestamp": timestamp,
    }
    if secret:
        headers["X-Dashboard-Signature"] = signature(secret, timestamp, body)
    return headers
