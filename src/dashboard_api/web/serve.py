"""Serves the dashboard: `/static/...` files, and its page for every other unmatched GET.

The page is one HTML file; the client routes `/tasks`, `/tasks/{id}` and the rest itself, so
any GET that no route of the API matched (and that is not under a prefix the API owns)
answers that page. Paths that some route matches with another method keep their 405, and
the API's own prefixes keep their 404 problem documents.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static"
INDEX_FILE = STATIC_DIR / "index.html"

# Prefixes the API owns: an unknown path under one of them is the API's 404, never the page.
API_PREFIXES = ("/api", "/ws", "/v1", "/docs", "/redoc", "/openapi.json", "/metrics", STATIC_PREFIX)

# The page runs only its own files: no inline script or style, no eval, nothing from another
# origin, and it may not be framed. `connect-src 'self'` covers fetch and the same-origin
# WebSocket (CSP Level 3 matches ws:/wss: for 'self'). The API's answers keep their stricter
# `default-src 'none'` (security/headers.py only fills in a CSP a response does not set).
PAGE_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?")


def is_api_path(path: str) -> bool:
    return any(_under(path, prefix) for prefix in API_PREFIXES)


def api_paths(app: FastAPI) -> list[str]:
    """The API's path templates (`/api/tasks/{task_id}`...), as its OpenAPI schema lists them
    (built once and cached by FastAPI), for the page's feature checks."""
    return sorted(p for p in app.openapi().get("paths", {}) if p.startswith("/api/"))


def render_page(app: FastAPI) -> bytes:
    """index.html with the API's paths in a <meta> (data, not script: the CSP allows it), so
    the page shows a feature (budgets, export...) only where the server has its endpoint."""
    text = INDEX_FILE.read_text("utf-8")
    meta = f'<meta name="api-paths" content="{html.escape(" ".join(api_paths(app)))}">'
    return text.replace('<meta name="api-paths" content="">', meta, 1).encode()


def page_response(body: bytes) -> Response:
    return Response(
        body,
        media_type="text/html; charset=utf-8",
        headers={"content-security-policy": PAGE_CSP, "cache-control": "no-store"},
    )


class _Assets(StaticFiles):
    """Static files revalidated on every load (ETag), so a new release is picked up at once."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["cache-control"] = "no-cache"
        return response


def install_dashboard(app: FastAPI) -> None:
    """Mount the files and make the page the router's answer to an unmatched GET."""
    app.mount(STATIC_PREFIX, _Assets(directory=STATIC_DIR), name="static")
    not_found = app.router.default
    page: list[bytes] = []  # rendered on first use: every router is included by then

    async def page_or_not_found(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and not is_api_path(scope["path"])
        ):
            if not page:
                page.append(render_page(app))
            await page_response(page[0])(scope, receive, send)
            return
        await not_found(scope, receive, send)

    app.router.default = page_or_not_found


__all__ = ["PAGE_CSP", "STATIC_DIR", "install_dashboard", "is_api_path"]
