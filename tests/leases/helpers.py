"""Requests the lease tests make over and over (register, claim, read, append) and a
metric sample read from /metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.leases.conftest import Leased


async def register(leased: Leased, **body: Any) -> dict[str, Any]:
    body = {"agent_type": "coder", "input_message": "fix the build", **body}
    r = await leased.client.post("/api/tasks", json=body, headers=leased.auth("agent"))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def claim(leased: Leased, **body: Any) -> dict[str, Any]:
    body = {"agent_type": "coder", "agent": "runner-1", **body}
    r = await leased.client.post("/api/tasks/claim", json=body, headers=leased.auth("agent"))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def get(leased: Leased, task_id: str) -> dict[str, Any]:
    r = await leased.client.get(f"/api/tasks/{task_id}", headers=leased.auth("user"))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def append(leased: Leased, task_id: str, content: str = "line\n") -> Any:
    return await leased.client.post(
        f"/api/tasks/{task_id}/output", json={"content": content}, headers=leased.auth("agent")
    )


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
