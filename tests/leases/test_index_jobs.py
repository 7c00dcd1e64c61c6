"""Index jobs hold a lease (docs/api.md §13): renewed by PATCH, failed by the reaper when it
runs out, and the next re-index creates a new job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.leases.conftest import Leased, ts_of
from tests.support.clock import FakeClock

GITHUB = {"type": "github_repo", "config": {"owner": "acme", "repo": "lease"}}


async def _source_with_claimed_job(
    leased: Leased, claim: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    c = leased.client
    r = await c.post("/api/sources", json=GITHUB, headers=leased.auth("admin"))
    sid = r.json()["source_id"]
    assert (
        await c.post(f"/api/sources/{sid}/reindex", headers=leased.auth("admin"))
    ).status_code == 202
    r = await c.post(
        "/api/sources/jobs/claim", json=claim or {"agent": "ix"}, headers=leased.auth("agent")
    )
    assert r.status_code == 200, r.text
    return sid, r.json()


async def test_a_claimed_job_holds_a_lease_renewed_lazily_by_patch(
    leased: Leased, clock: FakeClock
) -> None:
    _, job = await _source_with_claimed_job(leased)
    start = clock.now()
    assert ts_of(job["lease_expires_at"]) == start + timedelta(seconds=300)

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        r = await leased.client.patch(
            f"/api/sources/jobs/{job['job_id']}", json=body, headers=leased.auth("agent")
        )
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    clock.advance(100)  # 200 s left, more than half: no renewal needed
    assert ts_of((await patch({"progress": 0.1}))["lease_expires_at"]) == start + timedelta(
        seconds=300
    )
    clock.advance(60)  # 140 s left: renewed to a whole lease from now
    renewed = await patch({"progress": 0.2})
    assert ts_of(renewed["lease_expires_at"]) == clock.now() + timedelta(seconds=300)
    clock.advance(299)
    assert await leased.reap() == 0  # not expired yet
    done = await patch({"status": "succeeded"})
    assert done["lease_expires_at"] is None


async def test_an_expired_job_fails_and_the_next_reindex_makes_a_new_one(
    leased: Leased, clock: FakeClock
) -> None:
    sid, job = await _source_with_claimed_job(leased, {"agent": "ix", "lease_seconds": 10})
    assert ts_of(job["lease_expires_at"]) == clock.now() + timedelta(seconds=10)
    c = leased.client
    # Still leased: a re-index answers with the running job.
    r = await c.post(f"/api/sources/{sid}/reindex", headers=leased.auth("admin"))
    assert (r.status_code, r.json()["job_id"]) == (200, job["job_id"])
    clock.advance(10.001)
    assert await leased.reap() == 1
    assert await leased.reap() == 0
    r = await c.get(f"/api/sources/{sid}", headers=leased.auth("user"))
    source = r.json()
    assert (source["status"], source["last_error"]) == ("failed", "lease expired")
    latest = source["latest_job"]
    assert (latest["job_id"], latest["status"], latest["error"]) == (
        job["job_id"],
        "failed",
        "lease expired",
    )
    assert latest["lease_expires_at"] is None
    # The dead indexer's late report is refused with the current status.
    r = await c.patch(
        f"/api/sources/jobs/{job['job_id']}", json={"progress": 0.9}, headers=leased.auth("agent")
    )
    assert (r.status_code, r.json()["current_status"]) == (409, "failed")
    r = await c.post(f"/api/sources/{sid}/reindex", headers=leased.auth("admin"))
    assert r.status_code == 202
    assert r.json()["job_id"] != job["job_id"]


async def test_a_reindex_replaces_a_stuck_job_before_the_reaper_runs(
    leased: Leased, clock: FakeClock
) -> None:
    sid, job = await _source_with_claimed_job(leased, {"agent": "ix", "lease_seconds": 10})
    clock.advance(11)
    r = await leased.client.post(f"/api/sources/{sid}/reindex", headers=leased.auth("admin"))
    assert r.status_code == 202
    assert r.json()["job_id"] != job["job_id"]
    jobs = (await leased.client.get(f"/api/sources/{sid}/jobs", headers=leased.auth("user"))).json()
    assert [(j["status"], j["error"]) for j in jobs["items"]] == [
        ("queued", None),
        ("failed", "lease expired"),
    ]
    assert await leased.reap() == 0


async def test_a_patch_after_expiry_but_before_the_reaper_wins(
    leased: Leased, clock: FakeClock
) -> None:
    """The reaper's move is conditional on the lease being over when it runs: a late
    report that renewed the lease first keeps the job."""
    _, job = await _source_with_claimed_job(leased, {"agent": "ix", "lease_seconds": 10})
    clock.advance(12)
    r = await leased.client.patch(
        f"/api/sources/jobs/{job['job_id']}", json={"progress": 0.5}, headers=leased.auth("agent")
    )
    assert (r.status_code, r.json()["status"]) == (200, "running")
    assert ts_of(r.json()["lease_expires_at"]) == clock.now() + timedelta(seconds=10)
    assert await leased.reap() == 0
