"""What a notification says: the webhook body (the alert document) and Slack's message."""

from __future__ import annotations

from typing import Any

import orjson


def webhook_body(document: dict[str, Any]) -> bytes:
    """The alert JSON, compact (the exact bytes the signature covers)."""
    return orjson.dumps(document)


def _value_text(document: dict[str, Any]) -> str:
    value, threshold = document.get("value"), document.get("threshold")
    return f"value {value:g} (threshold {threshold:g})" if isinstance(value, float | int) else ""


def slack_body(document: dict[str, Any]) -> bytes:
    """Slack's incoming-webhook message: `text` (also the notification preview) and one
    section block with the details."""
    state = document.get("state", "firing")
    icon = ":rotating_light:" if state == "firing" else ":white_check_mark:"
    title = f"{icon} [{state.upper()}] {document.get('rule_name') or document.get('rule_id')}"
    summary = str(document.get("summary", ""))
    details = " · ".join(
        part
        for part in (
            f"kind `{document.get('kind')}`" if document.get("kind") else "",
            _value_text(document),
            f"since {document.get('started_at')}" if document.get("started_at") else "",
            f"resolved {document.get('resolved_at')}" if document.get("resolved_at") else "",
        )
        if part
    )
    message = {
        "text": f"{title}: {summary}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{summary}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": details or "-"}]},
        ],
    }
    return orjson.dumps(message)
