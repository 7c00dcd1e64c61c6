"""Channel names, who may subscribe to what, and the hook other features use to authorize.

`conversation:{id}` is authorized by a lookup that another feature registers:

    channel_authorizers["conversation"] = lookup_conversation_owner

where `async def lookup_conversation_owner(ctx, conversation_id) -> str | None` returns the
owner's user id, or None when there is no such conversation.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from dashboard_api.auth import Principal

ChannelKind = Literal["task", "tasks", "conversation", "webhooks", "sources", "agents"]
FIXED_CHANNELS: frozenset[str] = frozenset({"tasks", "webhooks", "sources", "agents"})
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,255}")

# prefix -> async (ctx, resource_id) -> owner user id, or None when the resource is missing.
OwnerLookup = Callable[[Any, str], Awaitable[str | None]]
channel_authorizers: dict[str, OwnerLookup] = {}


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel name."""

    name: str
    kind: ChannelKind
    resource_id: str | None = None


def parse_channel(name: object) -> Channel | None:
    """The channel, or None when the name is not one of API.md §10."""
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


async def authorize(ctx: Any, principal: Principal, channel: Channel) -> AuthVerdict:
    """Whether `principal` may subscribe (task existence is checked by the subscription)."""
    if principal.role == "agent":
        return "ok" if channel.kind == "task" else "forbidden"
    if channel.kind != "conversation":
        return "ok"
    assert channel.resource_id is not None
    lookup = channel_authorizers.get("conversation")
    if lookup is None:
        # No conversations feature registered: nothing can be found.
        return "not_found"
    owner = await lookup(ctx, channel.resource_id)
    if owner is None:
        return "not_found"
    if principal.is_admin or owner == principal.user_id:
        return "ok"
    return "not_found"  # another user's conversation: do not leak that it exists
