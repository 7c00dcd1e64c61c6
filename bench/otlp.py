"""OTLP ingestion: spans per second through POST /v1/traces, one server process, PostgreSQL.

    python -m bench.otlp [--requests 200] [--batch 512] [--spans-per-trace 10]
                         [--connections 4] [--content] [--before-src DIR]

One real uvicorn server (PostgreSQL + Redis, as in production) on a database of its own.
The bodies are made before timing: binary protobuf `ExportTraceServiceRequest`s of
`--batch` spans (the OpenTelemetry SDK's default batch), each made of whole agent
invocations of `--spans-per-trace` spans (an invoke_agent root, chat calls with model
and token usage, tool calls), children before their root as a batch processor exports
them. `--connections` keep-alive connections send them; the figure is spans stored per
second of wall time, with the server's CPU seconds per 10,000 spans. In the same run,
`GET /api/health` on the same connections gives the floor the machine allows (requests
per second of a request that does nothing), and the ratio of OTLP requests per second
to it. Finally every invocation is checked to have become exactly one task.

`--before-src DIR` (a checkout of another commit: its `src` is served) starts a second
server on the same database and sends it as many requests, alternately with this
checkout's server in rounds of a tenth of the requests each (the first to go switching
every round), so that both figures come from the same moments of a shared machine; the
ratio after / before is reported. A third server of this checkout, started first and sent
no spans, takes the lead of every periodic job (a lead stays with the replica that took
it): otherwise the server that happened to lead would fold the other's analytics
contributions (about a twentieth of its CPU) and look the slower. Its CPU is reported
apart (`jobs_server_cpu_s_per_10k_spans`: both sides' jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from bench._common import (
    REDIS_URL,
    KeepAliveClient,
    connect,
    cpu_seconds,
    free_port,
    scratch_database,
)
from bench._server import start_server, stop_server, wait_healthy


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def invocation(spans_per_trace: int, content: bool) -> list[Span]:
    """One agent run: children (alternating chat and tool calls) first, then the root."""
    trace = secrets.token_bytes(16)
    root_id = secrets.token_bytes(8)
    t0 = time.time_ns()
    children = []
    for i in range(spans_per_trace - 1):
        start = t0 + i * 1_000_000
        if i % 2 == 0:
            attributes = [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.request.model", "claude-sonnet-4"),
                _kv("gen_ai.usage.input_tokens", 1000 + i),
                _kv("gen_ai.usage.output_tokens", 200 + i),
            ]
            name = "chat claude-sonnet-4"
        else:
            attributes = [
                _kv("gen_ai.operation.name", "execute_tool"),
                _kv("gen_ai.tool.name", "grep"),
            ]
            name = "execute_tool grep"
        span = Span(
            trace_id=trace,
            span_id=secrets.token_bytes(8),
            parent_span_id=root_id,
            name=name,
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start,
            end_time_unix_nano=start + 900_000,
            attributes=attributes,
        )
        if content and i % 2 == 0:
            span.events.add(
                name="gen_ai.choice", attributes=[_kv("content", f"step {i}: looking at it")]
            )
        children.append(span)
    root = Span(
        trace_id=trace,
        span_id=root_id,
        name="invoke_agent coder",
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + spans_per_trace * 1_000_000,
        attributes=[
            _kv("gen_ai.operation.name", "invoke_agent"),
            _kv("gen_ai.agent.name", "coder"),
        ],
    )
    return [*children, root]


def bodies(requests: int, batch: int, spans_per_trace: int, content: bool) -> list[bytes]:
    resource = Resource(attributes=[_kv("service.name", "bench-agent")])
    out = []
    for _ in range(requests):
        spans: list[Span] = []
        while len(spans) + spans_per_trace <= batch:
            spans += invocation(spans_per_trace, content)
        request = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
        )
        out.append(request.SerializeToString())
    return out


async def _send_all(port: int, token: str, payloads: list[bytes], connections: int) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-protobuf"}
    queue = list(reversed(payloads))

    async def worker() -> None:
        async with KeepAliveClient("127.0.0.1", port, headers) as http:
            while queue:
                status, text = await http.request("POST", "/v1/traces", queue.pop())
                assert status == 200, text[:300]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - start


async def _health_rate(port: int, connections: int, seconds: float) -> float:
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        async with KeepAliveClient("127.0.0.1", port) as http:
            while time.perf_counter() < end:
                status, _ = await http.request("GET", "/api/health")
                assert status == 200
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - start)


ROUNDS = 10


async def _alternate(
    ports: dict[str, int], pids: dict[str, int], token: str, payloads: list[bytes], c: int
) -> dict[str, tuple[float, float]]:
    """Each server's (wall seconds, server CPU seconds) for its share of `payloads`, sent
    in alternating rounds."""
    sides = list(ports)
    share = len(payloads) // len(sides)
    spent = {side: [0.0, 0.0] for side in sides}
    for r in range(ROUNDS):
        for side in sides if r % 2 == 0 else reversed(sides):
            k = sides.index(side)
            mine = payloads[k * share : (k + 1) * share]
            part = mine[r * share // ROUNDS : (r + 1) * share // ROUNDS]
            cpu0 = cpu_seconds(pids[side])
            spent[side][0] += await _send_all(ports[side], token, part, c)
            spent[side][1] += cpu_seconds(pids[side]) - cpu0
    return {side: (wall, cpu) for side, (wall, cpu) in spent.items()}


def _figures(spans: int, requests: int, wall: float, cpu: float, health: float) -> dict[str, Any]:
    return {
        "spans": spans,
        "spans_per_second": round(spans / wall),
        "requests_per_second": round(requests / wall, 1),
        "server_cpu_s_per_10k_spans": round(cpu * 10_000 / spans, 3),
        "spans_per_server_cpu_second": round(spans / cpu) if cpu else None,
        "otlp_requests_vs_health_floor": round(requests / wall / health, 4),
        "spans_vs_health_floor": round(spans / wall / health, 2),
    }


async def main(args: argparse.Namespace) -> None:
    sides = ["after", "before"] if args.before_src else ["after"]
    n = len(sides)
    payloads = bodies(args.requests * n + 5 * n, args.batch, args.spans_per_trace, args.content)
    per_request = (args.batch // args.spans_per_trace) * args.spans_per_trace
    async with scratch_database("dash_bench_otlp_", ("agent",)) as (db_url, tokens):
        prefix = f"dashbench:{uuid.uuid4().hex[:8]}:"
        env = {
            **os.environ,
            "DASHBOARD_DATABASE_URL": db_url,
            "DASHBOARD_REDIS_URL": REDIS_URL,
            "DASHBOARD_REDIS_PREFIX": prefix,
            "DASHBOARD_REDIS_INGRESS_PREFIX": prefix,
            "DASHBOARD_LOG_LEVEL": "WARNING",
            "DASHBOARD_RATE_LIMIT_PER_MINUTE": "0",
            # As many connections as requests in flight (and as many again for the
            # jobs): the shared PostgreSQL serves other databases too.
            "DASHBOARD_DATABASE_POOL_SIZE": str(args.connections),
        }
        srcs = {"after": None, "before": str(Path(args.before_src or ".") / "src")}
        servers: dict[str, Any] = {}
        if args.before_src:
            # Started and healthy first: its jobs tick first, so it leads them all.
            jobs_port = free_port()
            servers["jobs"] = start_server(jobs_port, env, None)
            await wait_healthy(jobs_port, timeout=90)
        ports = {side: free_port() for side in sides}
        servers.update({side: start_server(ports[side], env, srcs[side]) for side in sides})
        try:
            for i, side in enumerate(sides):
                await wait_healthy(ports[side], timeout=90)  # a loaded machine starts slowly
                await _send_all(ports[side], tokens["agent"], payloads[5 * i : 5 * i + 5], 1)
            timed = payloads[5 * n :]
            health_before = await _health_rate(ports["after"], args.connections, 3.0)
            jobs_cpu = cpu_seconds(servers["jobs"].pid) if "jobs" in servers else 0.0
            spent = await _alternate(
                ports,
                {side: servers[side].pid for side in sides},
                tokens["agent"],
                timed,
                args.connections,
            )
            if "jobs" in servers:
                jobs_cpu = cpu_seconds(servers["jobs"].pid) - jobs_cpu
            health_after = await _health_rate(ports["after"], args.connections, 3.0)
        finally:
            for server in servers.values():
                stop_server(server)
        conn = await connect(db_url.rsplit("/", 1)[1])
        try:
            tasks = await conn.fetchval("SELECT count(*) FROM tasks")
            stored = await conn.fetchval("SELECT count(*) FROM otlp_spans")
        finally:
            await conn.close()
    spans = args.requests * per_request
    invocations = len(payloads) * (per_request // args.spans_per_trace)
    health = (health_before + health_after) / 2
    result: dict[str, Any] = {
        side: _figures(spans, args.requests, *spent[side], health) for side in sides
    }
    if args.before_src:
        after, before = result["after"], result["before"]
        result["spans_per_second_after_vs_before"] = round(
            after["spans_per_second"] / before["spans_per_second"], 2
        )
        result["server_cpu_per_span_after_vs_before"] = round(
            after["server_cpu_s_per_10k_spans"] / before["server_cpu_s_per_10k_spans"], 2
        )
        result["jobs_server_cpu_s_per_10k_spans"] = round(jobs_cpu * 10_000 / (2 * spans), 3)
    result.update(
        health_requests_per_second=round(health),
        tasks_ok=tasks == invocations,
        spans_stored_ok=stored == invocations * args.spans_per_trace,
        loadavg_1m=os.getloadavg()[0],
    )
    print(json.dumps(result, indent=2))
    if not (result["tasks_ok"] and result["spans_stored_ok"]):
        raise SystemExit(f"WRONG: {tasks} tasks for {invocations} invocations, {stored} spans")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--spans-per-trace", type=int, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--content", action="store_true", help="a completion event per chat")
    parser.add_argument(
        "--before-src", help="a checkout of another commit to serve and time in the same run"
    )
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
