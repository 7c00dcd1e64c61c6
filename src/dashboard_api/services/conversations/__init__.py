"""Conversations: per-user chat threads, messages, and tasks that answer back.

Who reaches what (`access`):
- a `user` reaches only the conversations they own (anything else is 404, never 403);
- an `admin` reaches every conversation;
- an `agent` (the producer role) reaches any conversation by id to read it and post
  `assistant` / `system` messages, but cannot list, change, delete or link.

Totals (`membership`). `conversation_tasks` holds every task counted towards a
conversation: the tasks linked to it (`tasks.conversation_id`, set at registration or by
linking) and their descendants by `parent_task_id`, resolved to the root conversation
when the child is registered (or when its ancestor is linked). `message_count`,
`task_count` and `cost_micros` on the conversation row are kept by deltas inside the
transaction of every task write (`replies.on_task_written`, called through
`services.task_hooks`), so a list reads them straight off the row and a late cost update
is counted too.

Replies (`replies`). When a linked task reaches a terminal state, the conversation gets
one message (`assistant` with the result; `system` with the error, or for a
cancellation). The task row lock serializes terminal moves, and a unique
(conversation_id, reply_task_id) key makes a second reply impossible even if two writers
race.

The modules: `access` (who reaches what, the channel name), `threads` (the
conversations themselves), `messages` (posting and listing), `links` (linking tasks),
`membership` (which conversation a task counts towards, and the totals), `replies` (the
task-write hook).
"""

from __future__ import annotations

from collections.abc import Sequence

from dashboard_api.services.conversations.access import (
    can_access_conversation,
    channel,
    conversation_owner,
)
from dashboard_api.services.conversations.links import link_task
from dashboard_api.services.conversations.messages import list_messages, post_message
from dashboard_api.services.conversations.replies import on_task_written
from dashboard_api.services.conversations.threads import (
    ConversationFilters,
    create_conversation,
    delete_conversation,
    get_conversation,
    list_conversations,
    update_conversation,
)

__all__: Sequence[str] = (
    "ConversationFilters",
    "can_access_conversation",
    "channel",
    "conversation_owner",
    "create_conversation",
    "delete_conversation",
    "get_conversation",
    "link_task",
    "list_conversations",
    "list_messages",
    "on_task_written",
    "post_message",
    "update_conversation",
)
