"""Sealing small secrets (webhook signing secrets) before they reach the database.

The clear secret is needed to verify HMAC signatures, so it cannot be hashed. It is sealed
in Python, before SQLAlchemy sees it, so that SQL logs (parameters and rows, at INFO and
DEBUG), driver debug logs and database dumps only ever hold the sealed form.

Scheme (stdlib only): a random 16-byte nonce; the secret XOR an HMAC-SHA256 keystream
(PRF in counter mode); a 128-bit HMAC-SHA256 tag over nonce and ciphertext
(encrypt-then-MAC), with separate derived keys. With `webhook_secrets_key` set this is
encryption at rest; without it the built-in key only obfuscates.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from dashboard_api.settings import Settings

_VERSION = "v1:"
_BUILTIN_KEY = b"dashboard-api/webhook-secrets/builtin-key/v1"
_NONCE, _TAG = 16, 16


def box_key(settings: Settings) -> bytes:
    """The sealing key of this deployment."""
    if settings.webhook_secrets_key is not None:
        return settings.webhook_secrets_key.get_secret_value().encode()
    return _BUILTIN_KEY


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"derive:" + purpose, hashlib.sha256).digest()


def _keystream(key: bytes, nonce: bytes, size: int) -> bytes:
    enc = _derive(key, b"enc")
    blocks = (size + 31) // 32
    stream = b"".join(
        hmac.new(enc, nonce + i.to_bytes(8, "big"), hashlib.sha256).digest() for i in range(blocks)
    )
    return stream[:size]


def _tag(key: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(_derive(key, b"mac"), nonce + ciphertext, hashlib.sha256).digest()[:_TAG]


def seal(secret: str, key: bytes) -> str:
    """The sealed, printable form of `secret`."""
    nonce = os.urandom(_NONCE)
    data = secret.encode()
    ciphertext = bytes(a ^ b for a, b in zip(data, _keystream(key, nonce, len(data)), strict=True))
    raw = nonce + ciphertext + _tag(key, nonce, ciphertext)
    return _VERSION + base64.urlsafe_b64encode(raw).decode("ascii")


def unseal(sealed: str, key: bytes) -> str | None:
    """The clear secret, or None when it was sealed with another key (or is damaged)."""
    if not sealed.startswith(_VERSION):
        return None
    try:
        raw = base64.urlsafe_b64decode(sealed[len(_VERSION) :].encode("ascii"))
    except (binascii.Error, ValueError):
        return None
    if len(raw) < _NONCE + _TAG:
        return None
    nonce, ciphertext, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
    if not hmac.compare_digest(tag, _tag(key, nonce, ciphertext)):
        return None
    stream = _keystream(key, nonce, len(ciphertext))
    try:
        return bytes(a ^ b for a, b in zip(ciphertext, stream, strict=True)).decode()
    except UnicodeDecodeError:
        return None
