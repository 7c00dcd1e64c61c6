"""Events on the wire: serialized once (orjson), shared by every subscriber of a replica."""

from __future__ import annotations

import struct
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from dashboard_api.timeutil import format_ts


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """JSON bytes; datetimes as RFC 3339 UTC with milliseconds."""
    return orjson.dumps(value, default=_default)


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final WebSocket text frame (server to client)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class OutEvent:
    """One message for clients: its payload, JSON text and WebSocket frame, each made once."""

    __slots__ = ("_data", "_frame", "_text", "payload", "seq", "type")

    def __init__(self, payload: dict[str, Any], data: bytes | None = None) -> None:
        self.payload = payload
        self.type: str = str(payload.get("type", ""))
        seq = payload.get("seq") if self.type == "task_output" else None
        # The seq of a task_output event (None for anything else or a malformed one).
        self.seq: int | None = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        self._data = data
        self._text: str | None = None
        self._frame: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = dumps(self.payload)
        return self._data

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.data.decode()
        return self._text

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = ws_text_frame(self.data)
        return self._frame


def output_event(channel: str, task_id: str, chunk: dict[str, Any]) -> OutEvent:
    """A `task_output` event for a stored chunk (replay)."""
    return OutEvent(
        {
            "type": "task_output",
            "channel": channel,
            "task_id": task_id,
            "seq": chunk["seq"],
            "stream": chunk["stream"],
            "content": chunk["content"],
            "created_at": chunk["created_at"],
        }
    )
