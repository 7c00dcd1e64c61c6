"""Channel names, and who may subscribe to what.

A channel of a resource another feature owns (`conversation:{id}`) is authorized by an
owner lookup that `create_app` hands in (`ChannelAuthorizer(owners={...})`): an
`async def lookup(resource_id) -> str | None` that returns the owner's user id, or None
when there is no such resource. The realtime layer itself knows no feature.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from dashboard_api.auth import Principal

ChannelKind = Literal[
    "task", "tasks", "conversation", "webhooks", "sources", "agents", "budgets", "alerts"
]
FIXED_CHANNELS: frozenset[str] = frozenset(
    {"tasks", "webhooks", "sources", "agents", "budgets", "alerts"}
)
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,255}")

# async (resource_id) -> owner user id, or None when the resource is missing.
OwnerLookup = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel name."""

    name: str
    kind: ChannelKind
    resource_id: str | None = None


def parse_channel(name: object) -> Channel | None:
    """The channel, or None when the name is not one of docs/api.md §10."""
    if not isinstance(name, str) or len(name) > 300:
        return None
    if name in FIXED_CHANNELS:
        return Channel(name, name)  # type: ignore[arg-type]
    prefix, sep, rest = name.partition(":")
    if not sep or _ID.fullmatch(rest) is None:
        return None
    if prefix == "task":
        return Channel(name, "task", rest)
    if prefix == "conversation":
        return Channel(name, "conversation", rest)
    return None


AuthVerdict = Literal["ok", "forbidden", "not_found"]


class ChannelAuthorizer:
    """Whether a principal may subscribe to a channel; `owners` by channel prefix."""

    def __init__(self, owners: Mapping[str, OwnerLookup] | None = None) -> None:
        self.owners: dict[str, OwnerLookup] = dict(owners or {})

    async def authorize(self, principal: Principal, channel: Channel) -> AuthVerdict:
        """The verdict (task existence is checked by the subscription itself)."""
        if principal.role == "agent":
            return "ok" if channel.kind == "task" else "forbidden"
        if channel.kind != "conversation":
            return "ok"
        assert channel.resource_id is not None
        lookup = self.owners.get("conversation")
        if lookup is None:
            # No conversations feature handed in: nothing can be found.
            return "not_found"
        owner = await lookup(channel.resource_id)
        if owner is None:
            return "not_found"
        if principal.is_admin or owner == principal.user_id:
            return "ok"
        return "not_found"  # another user's conversation: do not leak that it exists
