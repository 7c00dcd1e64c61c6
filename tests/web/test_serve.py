"""The dashboard's page and files as the app serves them (docs/api.md §18), and `/api/me`."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from dashboard_api.web.serve import PAGE_CSP, STATIC_DIR
from tests.support.tokens import Tokens

CLIENT_ROUTES = ("/", "/tasks", "/tasks/t-1", "/analytics", "/conversations", "/integrations")


def _directives(csp: str) -> dict[str, str]:
    return {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in csp.split(";")
        if part.strip()
    }


@pytest.mark.parametrize("path", [*CLIENT_ROUTES, "/tasks/a%2Fb", "/some/deep/link?x=1"])
async def test_every_client_route_serves_the_page_with_its_csp(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<div id="app">' in r.text
    csp = _directives(r.headers["content-security-policy"])
    assert csp["script-src"] == "'self'"  # no inline script, no eval
    assert "unsafe" not in r.headers["content-security-policy"]
    assert csp["frame-ancestors"] == "'none'"
    assert csp["default-src"] == "'none'"
    assert r.headers["x-frame-options"] == "DENY"
    # Nothing on the page comes from another origin.
    for url in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        assert url.startswith("/"), url
    assert "<script>" not in r.text  # every script is a file (the CSP would block others)


async def test_head_is_answered_too(client: httpx.AsyncClient) -> None:
    r = await client.head("/tasks")
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == PAGE_CSP


@pytest.mark.parametrize(
    "path", ["/api/nope", "/api", "/ws/x", "/v1/nope", "/metricsx/../metrics/x", "/static/nope.js"]
)
async def test_the_api_prefixes_keep_their_problem_404(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


async def test_other_methods_are_not_answered_with_the_page(client: httpx.AsyncClient) -> None:
    assert (await client.post("/tasks")).status_code == 404
    # A path the API routes with another method keeps its 405.
    assert (await client.delete("/api/status")).status_code == 405


async def test_api_answers_keep_the_api_csp(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/health")
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


async def test_the_page_lists_the_api_paths_it_may_use(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    meta = re.search(r'<meta name="api-paths" content="([^"]*)">', page)
    assert meta is not None
    paths = set(meta.group(1).split())
    assert {"/api/tasks", "/api/tasks/{task_id}", "/api/me", "/api/analytics/summary"} <= paths
    assert all(p.startswith("/api/") for p in paths)


async def test_static_files_are_served_with_their_types_and_revalidated(
    client: httpx.AsyncClient,
) -> None:
    for path, kind in (
        ("/static/app/main.js", "javascript"),
        ("/static/vendor/preact.js", "javascript"),
        ("/static/vendor/uPlot.iife.min.js", "javascript"),
        ("/static/app.css", "text/css"),
    ):
        r = await client.get(path)
        assert r.status_code == 200, path
        assert kind in r.headers["content-type"], (path, r.headers["content-type"])
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers.get("etag")


def test_vendored_files_carry_their_licences_and_pins() -> None:
    vendor = STATIC_DIR / "vendor"
    for name in ("preact", "htm", "uplot"):
        assert (vendor / f"LICENSE.{name}.txt").stat().st_size > 500
    versions = (vendor / "VERSIONS.txt").read_text()
    assert re.search(r"preact \d+\.\d+\.\d+", versions)
    # The recorded checksums match the files (a hand edit of a vendored file shows here).
    import hashlib

    for line in (vendor / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name


def test_no_script_touches_html_parsing_sinks() -> None:
    """Every stored string is rendered as text: our code never hands a string to the HTML
    parser (innerHTML and friends) nor evaluates one."""
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|dangerouslySetInnerHTML"
        r"|\beval\(|new Function|setAttribute\(\s*['\"](?:on|style|href)"
    )
    app_dir = Path(STATIC_DIR / "app")
    for js in app_dir.rglob("*.js"):
        assert not sinks.search(js.read_text()), js


def test_the_page_preloads_every_module() -> None:
    """The module graph loads in one round trip: index.html names every module (a new
    module left out would load a level later)."""
    page = (STATIC_DIR / "index.html").read_text()
    named = set(re.findall(r'<link rel="modulepreload" href="(/static/[^"]+)">', page))
    named |= set(re.findall(r'<script type="module" src="(/static/[^"]+)">', page))
    modules = {f"/static/{p.relative_to(STATIC_DIR)}" for p in (STATIC_DIR / "app").rglob("*.js")}
    modules |= {f"/static/vendor/{n}" for n in ("preact.js", "hooks.js", "htm.js")}
    assert named == modules


def test_first_load_fits_the_budget() -> None:
    """What the first page load transfers (page, CSS, every module and vendored file)."""
    files = [STATIC_DIR / "index.html", STATIC_DIR / "app.css", STATIC_DIR / "favicon.svg"]
    files += list((STATIC_DIR / "app").rglob("*.js"))
    files += [p for p in (STATIC_DIR / "vendor").iterdir() if p.suffix in (".js", ".css")]
    assert sum(p.stat().st_size for p in files) < 300 * 1024


async def test_me_names_the_caller(client: httpx.AsyncClient, tokens: Tokens) -> None:
    for role, user in (("admin", "root"), ("user", "alice"), ("agent", "agent-1")):
        r = await client.get("/api/me", headers=tokens.headers(role))
        assert r.status_code == 200
        body = r.json()
        assert (body["role"], body["user_id"]) == (role, user)
        assert body["token_id"]
        assert getattr(tokens, role) not in r.text
    r = await client.get("/api/me", headers={"Authorization": "Bearer dash_revoked"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
