"""A channel's group: the caught-up subscribers of one channel, served by one shared write
(the fast path of the fan-out; see `Group`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from dashboard_api.realtime.events import OutEvent
from dashboard_api.realtime.sinks import Sink

log = logging.getLogger(__name__)

# A group whose last write took PACE_FROM or longer starts its next one at least
# PACE_FACTOR times that duration later (at most PACE_MAX): see `Group.pace`.
PACE_FROM = 0.002
PACE_FACTOR = 4.0
PACE_MAX = 0.1


class Member(Protocol):
    """A subscription, as its channel's group sees it."""

    sink: Sink
    active: bool

    def deliver(self, event: OutEvent) -> None: ...

    def caught_up(self, seq: int) -> None: ...


class GroupHub(Protocol):
    """The hub, as a group sees it: its limits, its delivery counters and its writer."""

    buffer_limit: int
    group_gap_wait: float
    write_slice: int
    events_delivered: int
    events_dropped: int
    events_delivered_shared: int
    group_leaves: int
    group_dissolves: int

    def mark_dirty(self, sink: Any) -> None: ...


class Group:
    """The caught-up subscribers of one channel, served by one shared write.

    A subscription joins once it has sent the channel's newest event and its socket takes
    data right away. From then on an event is added here once instead of being offered
    to each member, and at each write the frames gathered within the write interval are
    joined once and the same bytes are written to every member's socket. A member whose
    socket cannot take data at that moment, or an event that needs each subscription's
    own judgement (a `task_status`, a gap in the seqs not filled within the hub's
    `group_gap_wait`), sends members back to the per-subscription path, with every
    event they were due handed to their own sink in order first.

    Chunks published by concurrent appends (two requests, or two replicas) often arrive
    a little out of order: a chunk ahead of the next seq is held here, once for all
    members, until the missing ones arrive (then all of them are added in order). Sending
    the whole group back to the per-subscription path for that, as a gap did at first,
    cost each of the members a task, a gap wait and a socket write per event.
    """

    __slots__ = (
        "base",
        "channel",
        "events",
        "flushing",
        "gap_timer",
        "held",
        "hub",
        "last_write",
        "loose",
        "members",
        "pace",
        "seq",
        "task",
    )

    def __init__(self, hub: GroupHub, channel: str) -> None:
        self.hub = hub
        self.channel = channel
        self.task = channel.startswith("task:")
        # Subscriptions outside the group: each is offered every event of the channel.
        self.loose: set[Member] = set()
        # member -> index (in the channel's event numbering) of the next event it is due.
        self.members: dict[Member, int] = {}
        self.events: list[OutEvent] = []  # not yet written to every member
        self.base = 0  # index of events[0]
        # Task channels: the seq every member has sent (members are all caught up to it).
        self.seq = -1
        self.last_write = float("-inf")  # loop time of the last shared write's start
        # The least time between the starts of two shared writes (the hub's write interval
        # applies when it is longer): PACE_FACTOR times the wall time the last one took,
        # its slices and whatever ran between them. A write to 10,000 sockets takes ~14
        # ms of CPU on a quiet 2-core machine, and one write per event at 50 events/s
        # (the `tasks` channel of a busy fleet) took 0.68 of a core (bench `ws_scale`),
        # nearly all of it a syscall per socket and event. Spaced by 4x its duration,
        # the frames of several events share each socket's write, the group's writes
        # take at most about a fifth of the loop, and the spacing grows with the load
        # (up to PACE_MAX, the most latency it adds). Groups whose writes take less than
        # PACE_FROM (~1,500 sockets on a quiet machine) keep the hub's write interval.
        self.pace = 0.0
        self.flushing = False
        # Task channels: chunks that arrived ahead of seq + 1, by seq, until it arrives.
        self.held: dict[int, OutEvent] = {}
        self.gap_timer: asyncio.TimerHandle | None = None

    @property
    def total(self) -> int:
        return self.base + len(self.events)

    # --- events -------------------------------------------------------------------------

    def on_event(self, event: OutEvent) -> None:
        """Take a live event for the members (before the loose subscriptions see it)."""
        if not self.task:
            if self.members:
                self._add(event)
            return
        kind = event.type
        seq = event.seq
        if not self.members:
            if kind == "task_output" and seq is not None:
                self.seq = seq
            return
        if kind == "task_output":
            if seq is None or seq <= self.seq or seq in self.held:
                return  # a repeat (or a malformed one): every member would skip it
            if seq == self.seq + 1:
                self.seq = seq
                self._add(event)
                if self.held:
                    self._add_held()
                return
            self._hold(seq, event)
            return
        if kind == "task_status":
            self.dissolve()  # judged per subscription (output_seq, final status)
            return
        self._add(event)

    def _hold(self, seq: int, event: OutEvent) -> None:
        """A chunk ahead of the next seq: keep it until the ones before it arrive."""
        held = self.held
        held[seq] = event
        if len(held) > self.hub.buffer_limit:
            self.dissolve()
            return
        if self.gap_timer is None:
            loop = asyncio.get_running_loop()
            self.gap_timer = loop.call_later(self.hub.group_gap_wait, self._gap_expired)

    def _add_held(self) -> None:
        """Add the held chunks that now follow on (all of them, when the gap was filled)."""
        held = self.held
        while True:
            event = held.pop(self.seq + 1, None)
            if event is None:
                break
            self.seq += 1
            self._add(event)
        if not held and self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    def _gap_expired(self) -> None:
        """The missing chunks did not arrive in time: each member reads them itself."""
        self.gap_timer = None
        if self.held:
            self.dissolve()

    def _add(self, event: OutEvent) -> None:
        self.events.append(event)
        hub = self.hub
        n = len(self.members)
        hub.events_delivered += n
        hub.events_delivered_shared += n
        if len(self.events) == 1 and not self.flushing:
            self.hub.mark_dirty(self)

    # --- membership ---------------------------------------------------------------------

    def join(self, sub: Member) -> None:
        """Make `sub` a member if it is caught up and its socket takes data right now."""
        if sub not in self.loose or not sub.sink.can_share():
            return
        if self.task and getattr(sub, "last_sent", None) != self.seq:
            return
        self.loose.discard(sub)
        self.members[sub] = self.total

    def leave(self, sub: Member) -> None:
        """Back to the per-subscription path, with what it was due handed to its sink."""
        pos = self.members.pop(sub, None)
        if pos is None:
            return
        hub = self.hub
        hub.events_delivered_shared -= self.total - pos  # handed to its own sink now
        if sub.active:  # (not counted: one that leaves because it unsubscribed)
            hub.group_leaves += 1
            self.loose.add(sub)
        if self.task:
            sub.caught_up(self.seq)
        sink = sub.sink
        for event in self.events[pos - self.base :]:
            if not sink.offer(event):
                hub.events_delivered -= 1
                hub.events_dropped += 1
        if self.held:
            # Past the gap: the subscription waits for (or reads) the missing chunks itself.
            for seq in sorted(self.held):
                sub.deliver(self.held[seq])
        if not self.members:
            self._drop_held()

    def _drop_held(self) -> None:
        held = self.held
        if held:
            # No member is waiting for the gap any more: the group's seq moves past it
            # (a subscription joins only once it has sent everything up to here itself).
            self.seq = max(self.seq, max(held))
            held.clear()
        if self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    def dissolve(self) -> None:
        if self.members:
            self.hub.group_dissolves += 1
        for sub in list(self.members):
            self.leave(sub)
        self._drop_held()

    # --- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what gathered to every member (in slices, see `hub.write_slice`)."""
        if self.flushing or not self.events:
            return
        if not self.members:
            self.base = self.total
            self.events = []
            return
        self.flushing = True
        end = self.total
        data = b"".join([e.frame for e in self.events])
        self._write_slice(list(self.members), 0, end, data)

    def _write_slice(self, targets: list[Member], start: int, end: int, data: bytes) -> None:
        members = self.members
        stop = min(len(targets), start + self.hub.write_slice)
        for i in range(start, stop):
            sub = targets[i]
            pos = members.get(sub)
            if pos is None or pos >= end:
                continue  # left meanwhile, or joined after these events
            try:
                if pos == self.base:
                    written = sub.sink.write_shared(data)
                else:  # joined while these gathered: only its part of them
                    written = sub.sink.write_shared(
                        b"".join([e.frame for e in self.events[pos - self.base : end - self.base]])
                    )
            except Exception:
                log.exception("writing to a socket failed")
                self.leave(sub)
                continue
            if not written:
                self.leave(sub)  # its own queue from here (and 1013 if it overflows)
                continue
            members[sub] = end
        if stop < len(targets):
            # Let the loop run other work (requests, the broker's reader) between slices.
            asyncio.get_running_loop().call_soon(self._write_slice, targets, stop, end, data)
            return
        self.flushing = False
        took = asyncio.get_running_loop().time() - self.last_write
        self.pace = min(PACE_MAX, PACE_FACTOR * took) if took >= PACE_FROM else 0.0
        del self.events[: end - self.base]
        self.base = end
        if self.events:
            self.hub.mark_dirty(self)
