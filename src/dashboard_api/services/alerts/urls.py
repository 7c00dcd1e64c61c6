"""Which notification URLs the service may call: the SSRF guard.

A channel URL is chosen by an admin, but the requests go out from inside the
deployment, where loopback, link-local (cloud metadata at 169.254.169.254) and private
addresses reach what the internet cannot. Every address the host resolves to must be
public; the sender then connects to the address checked here, not to the name (a second
resolution could answer differently: DNS rebinding). `allow_private` (the setting
DASHBOARD_ALERTS_ALLOW_PRIVATE_URLS) lifts the address check, for tests and for
receivers on a private network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL may not be called; the message says why (safe to show to an admin)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL split into what the sender needs."""

    scheme: str
    host: str  # as written (IPv6 without brackets)
    port: int
    path: str  # path and query, at least "/"

    @property
    def host_header(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return shown if self.port == default else f"{shown}:{self.port}"


def parse_target(url: str) -> Target:
    """The parts of an http(s) URL without credentials; UrlRefused otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("the URL must be http or https")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL must not carry credentials")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default, path)


def display_url(target: Target) -> str:
    """What may be shown of a URL: scheme, host and port (paths of Slack webhook URLs, and
    of many others, carry the credential)."""
    return f"{target.scheme}://{target.host_header}/…"


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (IPv4-mapped IPv6 judged as its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(target: Target, *, allow_private: bool) -> list[IPAddress]:
    """The addresses to connect to, every one checked; UrlRefused when the host does not
    resolve or any of its addresses is not public (unless `allow_private`)."""
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        found: list[IPAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise UrlRefused(f"the host {target.host!r} does not resolve ({exc})") from None
        found = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in found:
                found.append(address)
        if not found:
            raise UrlRefused(f"the host {target.host!r} does not resolve")
    if not allow_private:
        blocked = [a for a in found if not is_public(a)]
        if blocked:
            raise UrlRefused(
                f"the host {target.host!r} resolves to a non-public address ({blocked[0]}); "
                "set DASHBOARD_ALERTS_ALLOW_PRIVATE_URLS=true to allow it"
            )
    return found


async def check_url(url: str, *, allow_private: bool) -> Target:
    """Parse and resolve `url` as the sender would; UrlRefused when it may not be called."""
    target = parse_target(url)
    await resolve(target, allow_private=allow_private)
    return target
