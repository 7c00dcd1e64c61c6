"""Fixtures of the realtime tests."""

from __future__ import annotations

from tests.support.replicas import pg

__all__ = ["pg"]
