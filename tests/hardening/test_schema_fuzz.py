"""Schema fuzzing: schemathesis over the live `/openapi.json`, every operation, every role.

For each role (admin, user, agent, another user, no token) and each operation the app
documents — including those of features that land later — hypothesis draws positive and
negative cases (some aimed at real resources) and checks that the answer is never a 5xx,
conforms to the documented status codes, content types and schemas, and that a caller
never gets a 2xx from an operation its role may not use, nor from another user's
resource (nor an answer carrying the secret title of the first user's conversation).

It runs on SQLite + the in-process broker and on PostgreSQL + Redis. `FUZZ_EXAMPLES`
(default 10) bounds the examples per operation, role and mode on SQLite,
`FUZZ_EXAMPLES_PG` (default 4, for CI's time budget, or `FUZZ_EXAMPLES` when that is set)
on PostgreSQL; `make fuzz` runs a longer, randomized round on both.

Beside it, an independent run as anyone would make it: `st run --checks all` (every check
schemathesis has, every phase: coverage, fuzzing, stateful) against a real uvicorn server
with an admin token, on both backends (`FUZZ_ALL_CHECKS_EXAMPLES`, default 4, per
operation). It must come back clean apart from the cross-field rules the schema states in
its descriptions but JSON Schema cannot enforce (`CROSS_FIELD_RULES`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as st_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dashboard_api.api.openapi import api_routes, route_access
from dashboard_api.app import create_app
from dashboard_api.db.engine import Database
from dashboard_api.services.tokens import create_token
from dashboard_api.settings import Settings
from dashboard_api.timeutil import SystemClock
from tests.support.env import (
    REDIS_URL,
    Backend,
    flush_redis_prefix,
    require_services,
    run_sync,
    truncate,
)
from tests.support.figures import FIGURE_LINES
from tests.support.servers import threaded_server
from tests.support.tokens import create_tokens

# One app per backend for the module (and one figure line each): one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hardening-schema-fuzz")]

# Examples per operation and role: positive cases, then negative ones. The roles whose
# answers are decided before any parameter matters (no token; another user) get fewer.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
PG_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES_PG", os.environ.get("FUZZ_EXAMPLES", "4")))
BACKEND_EXAMPLES = {"sqlite": EXAMPLES, "postgres": PG_EXAMPLES}
RANDOMIZE = os.environ.get("FUZZ_RANDOM") == "1"
ROLES = ("admin", "user", "agent", "other_user", "anonymous")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Real resources the cases are sometimes aimed at (otherwise ids are random: mostly 404).
KNOWN_TASKS = ("fz-queued", "fz-running", "fz-done")
# The title of alice's conversation: no answer to bob may ever carry it.
SECRET_TITLE = "alice-secret-" + uuid.uuid4().hex[:8]


@dataclass
class Target:
    backend: str
    examples: int
    app: FastAPI
    schema: Any
    tokens: dict[str, str]
    known: dict[str, list[str]]
    alice_conversation: str | None
    routes: dict[tuple[str, str], Any]


async def _tokens(url: str) -> dict[str, str]:
    db = Database(url)
    out: dict[str, str] = {}
    try:
        async with db.write() as session:
            for name, role, user in (
                ("admin", "admin", "root"),
                ("user", "user", "alice"),
                ("other_user", "user", "bob"),
                ("agent", "agent", "agent-1"),
            ):
                out[name], _ = await create_token(
                    session,
                    user_id=user,
                    role=role,  # type: ignore[arg-type]
                    now=SystemClock().now(),
                )
    finally:
        await db.dispose()
    return out


def _seed(app: FastAPI, tokens: dict[str, str]) -> str | None:
    client = st_asgi.get_client(app)  # type: ignore[arg-type]  # any ASGI app
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    for task_id, status in zip(KNOWN_TASKS, ("queued", "running", "running"), strict=True):
        r = client.post(
            "/api/tasks",
            json={
                "task_id": task_id,
                "agent_type": "coder",
                "input_message": "x",
                "status": status,
            },
            headers=agent,
        )
        assert r.status_code == 201, r.text
    for task_id in ("fz-running", "fz-done"):
        r = client.post(f"/api/tasks/{task_id}/output", json={"content": "hello"}, headers=agent)
        assert r.status_code == 200, r.text
    r = client.patch("/api/tasks/fz-done", json={"status": "completed"}, headers=agent)
    assert r.status_code == 200, r.text
    r = client.post(
        "/api/conversations",
        json={"title": SECRET_TITLE},
        headers={"Authorization": f"Bearer {tokens['user']}"},
    )
    if r.status_code == 201:
        return str(r.json()["conversation_id"])
    return None  # conversations not landed


def _build(backend: Backend) -> Target:
    tokens = run_sync(_tokens(backend.database_url))
    app = create_app(backend.settings(log_level="WARNING"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    conversation = _seed(app, tokens)
    known: dict[str, list[str]] = {"task_id": list(KNOWN_TASKS), "name": ["coder"]}
    if conversation is not None:
        known["conversation_id"] = [conversation]
    routes = {
        (method, route.path_format): route for route in api_routes(app) for method in route.methods
    }
    examples = BACKEND_EXAMPLES[backend.name]
    return Target(backend.name, examples, app, schema, tokens, known, conversation, routes)


class Targets:
    """One fuzzed app per backend, built on first use and kept for the module."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.request = request
        self.tmp = tmp
        self.built: dict[str, Target] = {}
        self.cleanups: list[Any] = []

    def get(self, name: str) -> Target:
        if name not in self.built:
            self.built[name] = _build(self._backend(name))
        return self.built[name]

    def _backend(self, name: str) -> Backend:
        if name == "sqlite":
            path = self.tmp / "fuzz.db"
            shutil.copyfile(self.request.getfixturevalue("sqlite_template"), path)
            return Backend("sqlite", f"sqlite+aiosqlite:///{path}", None, "fuzz:")
        require_services()
        url = self.request.getfixturevalue("pg_url")
        run_sync(truncate(url))
        prefix = f"dashfuzz:{uuid.uuid4().hex[:12]}:"
        self.cleanups.append(lambda: run_sync(flush_redis_prefix(prefix)))
        return Backend("postgres", url, REDIS_URL, prefix)


@pytest.fixture(scope="module")
def targets(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Targets]:
    built = Targets(request, tmp_path_factory.mktemp("fuzz"))
    try:
        yield built
    finally:
        for name, target in built.built.items():
            counts = target_counts(target.app)
            total = {role: sum(c.values()) for role, c in sorted(counts.items())}
            operations = len({label for c in counts.values() for label in c})
            FIGURE_LINES.append(
                f"schema fuzz [{name}]: {operations} operations, {target.examples} examples"
                f" per operation and role, examples per role {total},"
                f" {sum(total.values())} in all"
                + (f", readiness 503 {NOT_READY[name]} times" if name in NOT_READY else "")
            )
        st_asgi.shutdown_lifespans()
        for cleanup in built.cleanups:
            cleanup()


_COUNTS: dict[int, dict[str, Counter[str]]] = {}


def target_counts(app: FastAPI) -> dict[str, Counter[str]]:
    return _COUNTS.setdefault(id(app), {})


def _strategy(target: Target, operation: Any, mode: GenerationMode) -> Any:
    names = [p.name for p in operation.path_parameters]
    strategies = [operation.as_strategy(generation_mode=mode)]
    is_stream = operation.path.endswith("/stream")
    for name in names:
        values = target.known.get(name, [])
        if is_stream:
            values = [v for v in values if v == "fz-done"]  # a live stream never ends
        for value in values:
            strategies.append(
                operation.as_strategy(generation_mode=mode, path_parameters={name: value})
            )
    return st.one_of(strategies)


NOT_READY: dict[str, int] = {}


def _readiness_reports_a_dependency(operation: Any, response: Any) -> bool:
    if operation.path != "/api/health/ready" or response.status_code != 503:
        return False
    try:
        return bool(response.json().get("dependency"))
    except ValueError:
        return False


def _check_access(target: Target, role: str, case: Any, route: Any, status: int, body: str) -> None:
    needs_token, roles = route_access(route)
    where = f"{case.operation.label} as {role}: {status}"
    if role == "anonymous" and needs_token:
        assert status in (400, 401, 413, 422), where  # body parsing precedes auth
        return
    effective = "user" if role == "other_user" else role
    if needs_token and effective not in roles:
        assert not 200 <= status < 300, f"role {role} got through: {where}"
    if (
        role == "other_user"
        and target.alice_conversation is not None
        and target.alice_conversation in (case.path_parameters or {}).values()
    ):
        assert not 200 <= status < 300, f"another user's conversation answered: {where}"
    if role in ("other_user", "anonymous"):
        assert SECRET_TITLE not in body, f"alice's conversation leaked to {role}: {where}"


def _runner(
    target: Target,
    role: str,
    operation: Any,
    route: Any,
    mode: GenerationMode,
    counts: Counter[str],
) -> Any:
    headers = {} if role == "anonymous" else {"Authorization": f"Bearer {target.tokens[role]}"}
    timeout = 2 if operation.path.endswith("/stream") else 15

    n = target.examples
    share = n - n * 2 // 5 if mode == GenerationMode.POSITIVE else n * 2 // 5
    if role in ("anonymous", "other_user"):
        share = max(1, share // 2)

    @hsettings(
        max_examples=share,
        derandomize=not RANDOMIZE,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_strategy(target, operation, mode))
    def run(case: Any) -> None:
        counts[operation.label] += 1
        response = case.call(headers=headers, timeout=timeout)
        checks = CHECKS
        if _readiness_reports_a_dependency(operation, response):
            # Readiness' documented answer while a dependency is (briefly) away: with the
            # shared Redis of a busy CI box this happened once. Checked against its schema
            # like any answer; that it is right is the fault tests' job (they stop things).
            checks = [c for c in CHECKS if c is not not_a_server_error]
            NOT_READY[target.backend] = NOT_READY.get(target.backend, 0) + 1
        case.validate_response(response, checks=checks, headers=headers)
        _check_access(target, role, case, route, response.status_code, response.text)

    if RANDOMIZE:
        run = seed(int.from_bytes(os.urandom(4), "big"))(run)
    return run


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_every_operation_conforms_and_respects_roles(
    targets: Targets, backend_name: str, role: str
) -> None:
    target = targets.get(backend_name)
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert len(operations) >= 10
    counts = target_counts(target.app).setdefault(role, Counter())
    failures: list[str] = []
    for operation in operations:
        route = target.routes[(operation.method.upper(), operation.path)]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _runner(target, role, operation, route, mode, counts)()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to negate: no parameters
            except Exception as exc:  # collect every operation's failure, then fail once
                failures.append(f"--- {operation.label} [{mode.value}] as {role}\n{exc}")
    assert not failures, "\n\n".join(failures)[:20_000]
    assert sum(counts.values()) >= len(operations)


# --- the independent run: `st run --checks all` ---------------------------------------------

ALL_CHECKS_EXAMPLES = int(os.environ.get("FUZZ_ALL_CHECKS_EXAMPLES", "4"))
# A request the schema allows but that breaks one of these rules is refused with a 422
# naming the rule. Each is stated in the descriptions of the parameters it joins and in the
# API's description (`api/openapi.py`), because OpenAPI cannot say it of parameters.
CROSS_FIELD_RULES = {
    "`from` must be before `to`.": "window: from before to",
    "`from` is after `to`.": "window: from before to",
    "`to` is too early for the default window.": "window: room for the default",
    "`to` is too early for the default window; give `from`.": "window: room for the default",
    "Give either `page` or `cursor`, not both.": "paging: page or cursor",
    "Malformed cursor.": "paging: a cursor the service issued",
}
# Rules over other resources or the network, stated in the field's description: a rule
# names channels that exist; a channel URL reaches a public host.
DOCUMENTED_PREFIXES = {
    "No alert channel ": "alerts: a rule names existing channels",
    "The URL is refused": "alerts: a channel URL reaches a public host",
    "The window holds more than ": "analytics: a histogram window holds at most the bucket limit",
    "The window reaches the limits of the calendar": "analytics: buckets within years 1-9999",
}


@dataclass
class CheckFailure:
    check: str
    code: str
    operation: str
    status: int | None
    detail: str
    request: str

    @property
    def documented_rule(self) -> str | None:
        if self.code != "ST202" or self.status != 422:
            return None
        if self.detail in CROSS_FIELD_RULES:
            return CROSS_FIELD_RULES[self.detail]
        return next(
            (
                rule
                for prefix, rule in DOCUMENTED_PREFIXES.items()
                if self.detail.startswith(prefix)
            ),
            None,
        )


def _text_fits(schema: dict[str, Any], text: str) -> bool:
    """Whether `text` is a valid value of a string parameter schema (the keywords the API's
    query parameters use: pattern, maxLength, enum)."""
    if schema.get("type") != "string":
        return False
    pattern = schema.get("pattern")
    return (
        (pattern is None or re.search(pattern, text) is not None)
        and len(text) <= schema.get("maxLength", len(text))
        and text in schema.get("enum", [text])
    )


def _query_value_fits(schema: dict[str, Any], text: str) -> bool:
    options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
    return any(
        _text_fits(o["items"], text) if o.get("type") == "array" else _text_fits(o, text)
        for o in options
    )


def is_valid_once_in_query_string(openapi: dict[str, Any], failure: CheckFailure) -> bool:
    """A "negative" case schemathesis made by giving a string query parameter a number or
    a boolean: written into the URL it is text again, and a valid value of the parameter
    (`?source=2.1e+144` names a source), so accepting it is right. True when the request
    has no path parameters and every query value it carries is valid text for its
    parameter."""
    if failure.code != "ST201" or not failure.request:
        return False
    method, _, path = failure.operation.partition(" ")
    operation = openapi["paths"].get(path, {}).get(method.lower())
    if operation is None or "{" in path:
        return False
    params = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "query"}
    pairs = parse_qsl(urlsplit(failure.request).query, keep_blank_values=True)
    return bool(pairs) and all(
        name in params and _query_value_fits(params[name], value) for name, value in pairs
    )


def _problem_detail(response: dict[str, Any] | None) -> str:
    content = (response or {}).get("content") or {}
    raw = content.get("$base64")
    try:
        body = json.loads(base64.b64decode(raw)) if raw else {}
    except ValueError:
        return ""
    return str(body.get("detail", "")) if isinstance(body, dict) else ""


def read_run(path: Path) -> tuple[int, Counter[str], list[CheckFailure]]:
    """(requests made, checks run by name, failed checks) from the run's NDJSON events."""
    requests = 0
    checks: Counter[str] = Counter()
    failures: list[CheckFailure] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        requests += len(recorder.get("interactions", {}))
        for case_id, results in recorder.get("checks", {}).items():
            interaction = recorder.get("interactions", {}).get(case_id) or {}
            response = interaction.get("response")
            for result in results:
                checks[result["name"]] += 1
                if result["status"] != "failure":
                    continue
                failure = result["failure_info"]["failure"]
                failures.append(
                    CheckFailure(
                        check=result["name"],
                        code=failure["code"],
                        operation=failure.get("operation") or recorder["label"],
                        status=(response or {}).get("status_code"),
                        detail=_problem_detail(response),
                        request=str((interaction.get("request") or {}).get("uri", "")),
                    )
                )
    return requests, checks, failures


# The whole schemathesis run (its coverage phase alone is ~1,500 requests per backend) takes
# minutes, not the per-test default's 120 s.
@pytest.mark.timeout(900)
def test_an_independent_run_with_every_check_is_clean(
    sync_backend: Backend, tmp_path: Path
) -> None:
    """`st run --checks all`, as an outsider would run it, against a real server."""
    tokens = create_tokens(sync_backend.database_url)
    report = tmp_path / "run.ndjson"
    seed = int.from_bytes(os.urandom(4), "big") if RANDOMIZE else 1
    with threaded_server(sync_backend.settings(log_level="WARNING")) as url:
        openapi = httpx.get(f"{url}/openapi.json").json()
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"), "run", f"{url}/openapi.json",
                "--checks", "all",
                "-H", f"Authorization: Bearer {tokens['admin']}",
                "--max-examples", str(ALL_CHECKS_EXAMPLES), "--seed", str(seed), "--no-shrink",
                "--workers", "1", "--request-timeout", "30",
                # Text the API stores may not hold NUL or unpaired surrogates (the schema's
                # description says so; JSON Schema has no way to): generate neither.
                "--generation-allow-x00", "false", "--generation-codec", "utf-8",
                "--report", "ndjson", "--report-ndjson-path", str(report),
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    requests, checks, failures = read_run(report)
    unexpected = [
        f
        for f in failures
        if f.documented_rule is None and not is_valid_once_in_query_string(openapi, f)
    ]
    rules = Counter(f.documented_rule for f in failures if f.documented_rule is not None)
    FIGURE_LINES.append(
        f"schema st run --checks all [{sync_backend.name}]: {requests} requests (seed {seed}),"
        f" {sum(checks.values())} checks of {len(checks)} kinds,"
        f" {len(unexpected)} failures, documented cross-field rules: {dict(sorted(rules.items()))}"
    )
    for check in ("positive_data_acceptance", "negative_data_rejection", "ignored_auth"):
        assert checks[check], f"{check} never ran: {checks}"
    assert not unexpected, (
        "\n".join(
            f"{f.code} {f.check} {f.operation}: {f.status} {f.detail!r}\n  {f.request[:300]}"
            for f in unexpected[:40]
        )
        + f"\n\nst run output:\n{run.stdout[-4000:]}"
    )


def test_only_query_text_that_fits_its_parameter_counts_as_valid(tmp_path: Path) -> None:
    openapi = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db")).openapi()

    def st201(operation: str, request: str) -> CheckFailure:
        return CheckFailure("negative_data_rejection", "ST201", operation, 200, "", request)

    performance = "GET /api/analytics/performance"
    base = "http://127.0.0.1:1/api/analytics/performance"

    def excused(query: str) -> bool:
        return is_valid_once_in_query_string(openapi, st201(performance, base + query))

    assert excused("?source=2.1e%2B144")
    assert not excused("?failure_reason=7")  # a pattern of two names: a number is neither
    assert not excused("?nope=1")
    assert not excused("")
    # `limit` is an integer: text that is no number stays a failure.
    tasks = "http://127.0.0.1:1/api/tasks"
    assert not is_valid_once_in_query_string(openapi, st201("GET /api/tasks", f"{tasks}?limit=x"))
    # Operations with path parameters are never excused.
    detail = "GET /api/tasks/{task_id}"
    assert not is_valid_once_in_query_string(openapi, st201(detail, f"{tasks}/1?x=1"))
    # Other checks' failures are not this one's business.
    other = CheckFailure("positive_data_acceptance", "ST202", performance, 422, "", base)
    assert not is_valid_once_in_query_string(openapi, other)
