"""One notification POST, to an address the SSRF guard has checked.

The host is resolved once (`urls.resolve`) and the connection goes to that address, with
the name kept for the Host header and for TLS (SNI and certificate check), so that a
second DNS answer cannot steer the request elsewhere. No redirect is followed, proxies
from the environment are ignored, the whole exchange (resolution included) has one
deadline, and only the first bytes of the answer are read. Error texts never hold the URL
(a Slack webhook URL is its own credential).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import httpx

from dashboard_api.services.alerts.urls import Target, UrlRefused, parse_target, resolve

EXCERPT_BYTES = 512


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one attempt got: an HTTP status, or an error (never both None)."""

    status_code: int | None
    error: str | None
    excerpt: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _pinned_url(target: Target, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{target.scheme}://{host}:{target.port}{target.path}"


async def _excerpt(response: httpx.Response) -> str | None:
    """The first bytes of the answer, decoded leniently; the rest is never read."""
    got = b""
    async for chunk in response.aiter_raw():
        got += chunk
        if len(got) >= EXCERPT_BYTES:
            break
    text = got[:EXCERPT_BYTES].decode("utf-8", "replace").strip()
    return text[:EXCERPT_BYTES] or None


def _describe(exc: BaseException, target: Target) -> str:
    text = str(exc).replace(target.path, "/…") if target.path != "/" else str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout: float,
) -> SendOutcome:
    """POST `body` to `url` (checked again here: the URL was checked when it was saved,
    but what its host resolves to may have changed since)."""
    try:
        target = parse_target(url)
    except UrlRefused as exc:
        return SendOutcome(None, f"refused: {exc}")
    try:
        async with asyncio.timeout(timeout):
            address = (await resolve(target, allow_private=allow_private))[0]
            extensions: dict[str, object] = {}
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            async with (
                httpx.AsyncClient(
                    trust_env=False, follow_redirects=False, timeout=timeout
                ) as client,
                client.stream(
                    "POST",
                    _pinned_url(target, address),
                    content=body,
                    headers={**headers, "Host": target.host_header},
                    extensions=extensions,
                ) as response,
            ):
                excerpt = await _excerpt(response)
                code = response.status_code
                error = None if 200 <= code < 300 else f"HTTP {code}"
                return SendOutcome(code, error, excerpt)
    except UrlRefused as exc:
        return SendOutcome(None, f"refused: {exc}")
    except TimeoutError:
        return SendOutcome(None, f"timed out after {timeout:g} s")
    except (httpx.HTTPError, OSError) as exc:
        return SendOutcome(None, _describe(exc, target))
