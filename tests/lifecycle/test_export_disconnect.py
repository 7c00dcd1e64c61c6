"""A client that leaves mid-export costs nothing further: the export stops reading, and
no connection, transaction or query of it stays behind (a real uvicorn server)."""

from __future__ import annotations

import asyncio
import socket
import struct
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import insert, text

from dashboard_api.db.models import Task
from dashboard_api.observability.setup import metrics_of
from tests.support.clock import T0
from tests.support.env import Backend
from tests.support.servers import serve_app
from tests.support.tokens import make_token

ROWS = 20_000
BATCH = 100


async def insert_tasks(app: object, n: int) -> None:
    db = app.state.ctx.db  # type: ignore[attr-defined]
    rows = [
        {
            "task_id": f"exp-{i:06d}",
            "status": "completed",
            "agent_type": "coder",
            "source": "api",
            "input_message": f"task {i} " + "x" * 300,
            "created_at": T0 + timedelta(seconds=i),
            "updated_at": T0 + timedelta(seconds=i),
            "metadata": {},
        }
        for i in range(n)
    ]
    async with db.write() as session:
        for start in range(0, n, 2000):
            await session.execute(insert(Task), rows[start : start + 2000])


def exported(app: object) -> float:
    registry = metrics_of(app.state.ctx).registry  # type: ignore[attr-defined]
    return registry.get_sample_value("dashboard_export_rows_total", {"format": "jsonl"}) or 0.0


def checked_out(app: object) -> int:
    engine = app.state.ctx.db.engine  # type: ignore[attr-defined]
    return int(engine.sync_engine.pool.checkedout())


async def export_queries_running(app: object) -> list[str]:
    """Sessions of the app's database (other than this one) inside a transaction or a
    query (PostgreSQL)."""
    db = app.state.ctx.db  # type: ignore[attr-defined]
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT state || ': ' || query FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state IS NOT NULL AND state <> 'idle'"
            )
        )
        return [r[0] for r in rows]


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_client_leaving_mid_export_stops_it(backend: Backend, how: str) -> None:
    # Periodic jobs off: they check connections out too, and this counts the export's.
    settings = backend.settings(
        export_batch_rows=BATCH,
        agent_sweep_interval_seconds=0,
        analytics_fold_interval_seconds=0,
        budgets_evaluate_interval_seconds=0,
        alerts_evaluate_interval_seconds=0,
        alerts_sender_interval_seconds=0,
        otlp_prune_interval_seconds=0,
        lease_reap_interval_seconds=0,
    )
    async with serve_app(settings) as (app, port):
        await insert_tasks(app, ROWS)
        token = await make_token(app, role="user", user_id="alice")
        sock = socket.socket()
        # A small receive window: the server cannot push the whole export into buffers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            (
                "GET /api/tasks/export?format=jsonl HTTP/1.1\r\n"
                "Host: test\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        got = 0
        while got < 50_000:
            got += len(await asyncio.wait_for(reader.read(8192), 10))
        assert exported(app) > 0
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

        # The export stops: its counter settles well short of the rows, and it holds no
        # connection (nor, on PostgreSQL, a transaction or a running query).
        settled = -1.0
        for _ in range(100):
            await asyncio.sleep(0.1)
            now = exported(app)
            if now == settled and checked_out(app) == 0:
                break
            settled = now
        await asyncio.sleep(0.5)
        assert exported(app) == settled
        assert settled < ROWS / 2, settled
        assert checked_out(app) == 0
        if backend.name == "postgres":
            assert await export_queries_running(app) == []

        # The server is fine: the next export runs to its end.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            before = exported(app)
            r = await http.get(
                "/api/tasks/export",
                params={"format": "jsonl"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200
            assert r.content.count(b"\n") == ROWS
            assert exported(app) - before == ROWS
