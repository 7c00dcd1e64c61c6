"""A real local HTTP receiver for notification tests: a tiny HTTP/1.1 server on a TCP
port that records every request and answers as the test scripts it (a status, or a
hang past the sender's timeout)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int = 0
    # What to answer, one entry per request ("hang" or a status code); then `default`.
    script: list[int | str] = field(default_factory=list)
    default: int | str = 200
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/secret-path-XYZ"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, path, headers, body))
            self.arrived.set()
            answer = self.script.pop(0) if self.script else self.default
            if answer == "hang":
                await asyncio.sleep(3600)
            status = int(answer)
            text = b'{"ok": true}' + b"x" * 2000
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(text)}\r\n"
                "Content-Type: application/json\r\nConnection: close\r\n\r\n".encode()
                + text
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def running_receiver(**kwargs: object) -> AsyncIterator[Receiver]:
    receiver = Receiver(**kwargs)  # type: ignore[arg-type]
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", receiver.port)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
