"""Webhook helpers: real provider signatures (GitHub, Jira, Slack) and configured secrets."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx

SECRETS = {
    "github": "gh-secret-Q7v1x9zz",
    "jira": "jira-secret-M3k8pp0a",
    "slack": "slack-secret-W2n5rr4b",
}


def hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def github_headers(
    secret: str, body: bytes, *, event: str = "issues", delivery: str = "d-1"
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body),
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
    }


def jira_headers(secret: str, body: bytes, *, delivery: str | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature": "sha256=" + hex_hmac(secret, body),
    }
    if delivery:
        headers["X-Atlassian-Webhook-Identifier"] = delivery
    return headers


def slack_headers(secret: str, body: bytes, *, timestamp: int) -> dict[str, str]:
    base = f"v0:{timestamp}:".encode() + body
    return {
        "Content-Type": "application/json",
        "X-Slack-Signature": "v0=" + hex_hmac(secret, base),
        "X-Slack-Request-Timestamp": str(timestamp),
    }


async def configure(
    client: httpx.AsyncClient,
    auth: Callable[[str], dict[str, str]],
    sources: Sequence[str] = ("github", "jira", "slack"),
) -> None:
    for source in sources:
        r = await client.put(
            f"/api/webhooks/{source}", json={"secret": SECRETS[source]}, headers=auth("admin")
        )
        assert r.status_code == 200, r.text
        assert r.json()["configured"] is True
