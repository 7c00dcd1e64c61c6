"""Data sources: config validation, identity, re-index jobs, claims, status moves, deletion."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

Auth = Callable[[str], dict[str, str]]

GITHUB = {"type": "github_repo", "config": {"owner": "acme", "repo": "api"}}
JIRA = {
    "type": "jira_project",
    "config": {"site_url": "https://acme.atlassian.net", "project_key": "OPS"},
}
CONFLUENCE = {
    "type": "confluence_space",
    "config": {"site_url": "https://acme.atlassian.net/wiki", "space_key": "ENG"},
}


async def _create(client: httpx.AsyncClient, auth: Auth, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/sources", json=body, headers=auth("admin"))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_create_each_type_and_read(client: httpx.AsyncClient, auth: Auth) -> None:
    full_github = {
        "type": "github_repo",
        "config": {
            "owner": "Acme-Corp",
            "repo": "web.site_v2",
            "branch": "release/1.x",
            "include_paths": ["docs/**/*.md", "*.rst"],
        },
        "name": "  Website  ",
        "enabled": False,
    }
    made = [await _create(client, auth, b) for b in (GITHUB, JIRA, CONFLUENCE, full_github)]
    assert [s["name"] for s in made] == [
        "acme/api",
        "OPS (acme.atlassian.net)",
        "ENG (acme.atlassian.net)",
        "Website",
    ]
    for s in made:
        assert s["status"] == "pending"
        assert (s["latest_job"], s["last_indexed_at"], s["last_error"]) == (None, None, None)
    assert made[3]["config"] == full_github["config"]
    assert made[3]["enabled"] is False
    assert made[2]["config"]["site_url"] == "https://acme.atlassian.net/wiki"

    listed = (await client.get("/api/sources", headers=auth("user"))).json()["items"]
    assert [s["source_id"] for s in listed] == [s["source_id"] for s in made]
    only = await client.get(
        "/api/sources", params={"type": "jira_project,confluence_space"}, headers=auth("user")
    )
    assert [s["type"] for s in only.json()["items"]] == ["jira_project", "confluence_space"]
    assert (
        await client.get("/api/sources", params={"type": "svn"}, headers=auth("user"))
    ).status_code == 422

    one = (await client.get(f"/api/sources/{made[1]['source_id']}", headers=auth("user"))).json()
    assert one == made[1]
    assert (await client.get("/api/sources/nope", headers=auth("user"))).status_code == 404
    # Creating queues no job.
    jobs = (
        await client.get(f"/api/sources/{made[0]['source_id']}/jobs", headers=auth("user"))
    ).json()
    assert (jobs["total"], jobs["items"], jobs["pages"]) == (0, [], 0)


async def test_roles(client: httpx.AsyncClient, auth: Auth) -> None:
    for role in ("user", "agent"):
        assert (
            await client.post("/api/sources", json=GITHUB, headers=auth(role))
        ).status_code == 403
    source = await _create(client, auth, GITHUB)
    sid = source["source_id"]
    for role in ("user", "agent"):
        assert (
            await client.post(f"/api/sources/{sid}/reindex", headers=auth(role))
        ).status_code == 403
        assert (await client.delete(f"/api/sources/{sid}", headers=auth(role))).status_code == 403
    assert (
        await client.post("/api/sources/jobs/claim", json={}, headers=auth("user"))
    ).status_code == 403
    assert (await client.get("/api/sources", headers=auth("agent"))).status_code == 403
    assert (await client.get("/api/sources")).status_code == 401


GOOD_GITHUB = {"owner": "acme", "repo": "api"}
GOOD_JIRA = {"site_url": "https://x.atlassian.net", "project_key": "AB"}
GOOD_CONFLUENCE = {"site_url": "https://x.atlassian.net", "space_key": "~bob"}

BAD_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("unknown type", {"type": "svn_repo", "config": {}}),
    ("no type", {"config": GOOD_GITHUB}),
    ("no config", {"type": "github_repo"}),
    ("config not an object", {"type": "github_repo", "config": "acme/api"}),
    ("extra top-level field", {"type": "github_repo", "config": GOOD_GITHUB, "token": "x"}),
    ("extra config field", {"type": "github_repo", "config": {**GOOD_GITHUB, "token": "x"}}),
    ("jira config for github", {"type": "github_repo", "config": GOOD_JIRA}),
    ("empty name", {"type": "github_repo", "config": GOOD_GITHUB, "name": "  "}),
    ("owner missing", {"type": "github_repo", "config": {"repo": "api"}}),
    ("owner empty", {"type": "github_repo", "config": {**GOOD_GITHUB, "owner": ""}}),
    ("owner leading dash", {"type": "github_repo", "config": {**GOOD_GITHUB, "owner": "-acme"}}),
    ("owner underscore", {"type": "github_repo", "config": {**GOOD_GITHUB, "owner": "ac_me"}}),
    ("owner 40 chars", {"type": "github_repo", "config": {**GOOD_GITHUB, "owner": "a" * 40}}),
    ("owner not a string", {"type": "github_repo", "config": {**GOOD_GITHUB, "owner": 5}}),
    ("repo empty", {"type": "github_repo", "config": {**GOOD_GITHUB, "repo": ""}}),
    ("repo slash", {"type": "github_repo", "config": {**GOOD_GITHUB, "repo": "a/b"}}),
    ("repo space", {"type": "github_repo", "config": {**GOOD_GITHUB, "repo": "a b"}}),
    ("repo 101 chars", {"type": "github_repo", "config": {**GOOD_GITHUB, "repo": "r" * 101}}),
    ("repo dot-dot", {"type": "github_repo", "config": {**GOOD_GITHUB, "repo": ".."}}),
    ("branch empty", {"type": "github_repo", "config": {**GOOD_GITHUB, "branch": ""}}),
    ("branch space", {"type": "github_repo", "config": {**GOOD_GITHUB, "branch": "my branch"}}),
    ("branch dot-dot", {"type": "github_repo", "config": {**GOOD_GITHUB, "branch": "a..b"}}),
    ("branch .lock", {"type": "github_repo", "config": {**GOOD_GITHUB, "branch": "x.lock"}}),
    (
        "include_paths str",
        {"type": "github_repo", "config": {**GOOD_GITHUB, "include_paths": "*.md"}},
    ),
    (
        "include_paths empty glob",
        {"type": "github_repo", "config": {**GOOD_GITHUB, "include_paths": [""]}},
    ),
    (
        "jira http",
        {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "http://x.atlassian.net"}},
    ),
    (
        "jira not a url",
        {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "x.atlassian.net"}},
    ),
    (
        "jira no host",
        {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "https:///path"}},
    ),
    (
        "jira credentials",
        {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "https://u:p@x.net"}},
    ),
    (
        "jira query",
        {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "https://x.net/?a=1"}},
    ),
    (
        "jira bad port",
        {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "https://x.net:99999"}},
    ),
    (
        "jira host too long",
        {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "https://" + "h" * 254}},
    ),
    ("jira ftp", {"type": "jira_project", "config": {**GOOD_JIRA, "site_url": "ftp://x.net"}}),
    ("jira key lowercase", {"type": "jira_project", "config": {**GOOD_JIRA, "project_key": "ops"}}),
    ("jira key one char", {"type": "jira_project", "config": {**GOOD_JIRA, "project_key": "A"}}),
    (
        "jira key 11 chars",
        {"type": "jira_project", "config": {**GOOD_JIRA, "project_key": "A" * 11}},
    ),
    (
        "jira key digit first",
        {"type": "jira_project", "config": {**GOOD_JIRA, "project_key": "1AB"}},
    ),
    ("jira key dash", {"type": "jira_project", "config": {**GOOD_JIRA, "project_key": "A-B"}}),
    ("jira empty jql", {"type": "jira_project", "config": {**GOOD_JIRA, "jql": ""}}),
    ("jira missing key", {"type": "jira_project", "config": {"site_url": "https://x.net"}}),
    (
        "confluence http",
        {"type": "confluence_space", "config": {**GOOD_CONFLUENCE, "site_url": "http://x.net"}},
    ),
    (
        "confluence key dash",
        {"type": "confluence_space", "config": {**GOOD_CONFLUENCE, "space_key": "a-b"}},
    ),
    (
        "confluence key empty",
        {"type": "confluence_space", "config": {**GOOD_CONFLUENCE, "space_key": ""}},
    ),
    (
        "confluence key 256",
        {"type": "confluence_space", "config": {**GOOD_CONFLUENCE, "space_key": "k" * 256}},
    ),
    ("confluence jira key", {"type": "confluence_space", "config": GOOD_JIRA}),
]

GOOD_EDGES: list[dict[str, Any]] = [
    {"type": "github_repo", "config": {"owner": "a", "repo": "r"}},
    {"type": "github_repo", "config": {"owner": "a" + "b" * 38, "repo": "r" * 100}},
    {"type": "github_repo", "config": {"owner": "a-1", "repo": "._-", "branch": "feature/x-1.2"}},
    {
        "type": "jira_project",
        "config": {"site_url": "https://jira.example.com:8443/", "project_key": "A1_"},
    },
    {
        "type": "jira_project",
        "config": {"site_url": "https://x.net", "project_key": "ABCDEFGHIJ", "jql": "a=b"},
    },
    {"type": "confluence_space", "config": {"site_url": "https://x.net", "space_key": "k" * 255}},
]


async def test_config_validation_table(client: httpx.AsyncClient, auth: Auth) -> None:
    for label, body in BAD_BODIES:
        r = await client.post("/api/sources", json=body, headers=auth("admin"))
        assert r.status_code == 422, (label, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), label
        problem = r.json()
        assert problem["status"] == 422
        assert problem["errors"], label
        assert all({"loc", "msg", "type"} <= set(e) for e in problem["errors"])
    for body in GOOD_EDGES:
        await _create(client, auth, body)
    assert (await client.get("/api/sources", headers=auth("user"))).json()["items"][3]["config"][
        "site_url"
    ] == "https://jira.example.com:8443"


async def test_duplicate_identities(client: httpx.AsyncClient, auth: Auth) -> None:
    await _create(client, auth, GITHUB)
    await _create(
        client,
        auth,
        {"type": "github_repo", "config": {"owner": "acme", "repo": "api", "branch": "Main"}},
    )
    await _create(client, auth, JIRA)
    await _create(client, auth, CONFLUENCE)
    duplicates = [
        {"type": "github_repo", "config": {"owner": "ACME", "repo": "Api"}},
        {"type": "github_repo", "config": {"owner": "acme", "repo": "API", "branch": "main"}},
        {
            "type": "github_repo",
            "config": {"owner": "acme", "repo": "api", "include_paths": ["x"]},
            "name": "other",
        },
        {
            "type": "jira_project",
            "config": {"site_url": "https://ACME.atlassian.net/", "project_key": "OPS"},
        },
        {
            "type": "jira_project",
            "config": {
                "site_url": "https://acme.atlassian.net:443/jira",
                "project_key": "OPS",
                "jql": "x",
            },
        },
        {
            "type": "confluence_space",
            "config": {"site_url": "https://Acme.Atlassian.net", "space_key": "ENG"},
        },
    ]
    for body in duplicates:
        r = await client.post("/api/sources", json=body, headers=auth("admin"))
        assert r.status_code == 409, body
        assert r.json()["status"] == 409
    distinct = [
        {"type": "github_repo", "config": {"owner": "acme", "repo": "api", "branch": "dev"}},
        {"type": "github_repo", "config": {"owner": "acme", "repo": "api2"}},
        {
            "type": "jira_project",
            "config": {"site_url": "https://acme.atlassian.net", "project_key": "OPS2"},
        },
        {
            "type": "jira_project",
            "config": {"site_url": "https://acme.atlassian.net:8443", "project_key": "OPS"},
        },
        {
            "type": "confluence_space",
            "config": {"site_url": "https://acme.atlassian.net", "space_key": "eng"},
        },
        {
            "type": "confluence_space",
            "config": {"site_url": "https://other.atlassian.net", "space_key": "ENG"},
        },
    ]
    for body in distinct:
        await _create(client, auth, body)


async def test_concurrent_creates_of_one_identity(client: httpx.AsyncClient, auth: Auth) -> None:
    answers = await asyncio.gather(
        *(client.post("/api/sources", json=GITHUB, headers=auth("admin")) for _ in range(8))
    )
    assert sorted(a.status_code for a in answers) == [201] + [409] * 7
    assert len((await client.get("/api/sources", headers=auth("user"))).json()["items"]) == 1


async def test_concurrent_reindex_gives_one_active_job(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    sid = (await _create(client, auth, GITHUB))["source_id"]
    answers = await asyncio.gather(
        *(client.post(f"/api/sources/{sid}/reindex", headers=auth("admin")) for _ in range(10))
    )
    assert sorted(a.status_code for a in answers) == [200] * 9 + [202]
    assert len({a.json()["job_id"] for a in answers}) == 1
    jobs = (await client.get(f"/api/sources/{sid}/jobs", headers=auth("user"))).json()
    assert jobs["total"] == 1
    assert jobs["items"][0]["status"] == "queued"
    source = (await client.get(f"/api/sources/{sid}", headers=auth("user"))).json()
    assert source["latest_job"]["job_id"] == jobs["items"][0]["job_id"]
    assert source["status"] == "pending"
    assert (
        await client.post("/api/sources/nope/reindex", headers=auth("admin"))
    ).status_code == 404


async def test_job_life_cycle(
    client: httpx.AsyncClient,
    auth: Auth,
    published: list[tuple[str, dict[str, Any]]],
) -> None:
    sid = (await _create(client, auth, JIRA))["source_id"]
    assert (await client.post("/api/sources/jobs/claim", headers=auth("agent"))).status_code == 204

    async def source() -> dict[str, Any]:
        r = await client.get(f"/api/sources/{sid}", headers=auth("user"))
        out: dict[str, Any] = r.json()
        return out

    async def patch(job_id: str, body: dict[str, Any]) -> httpx.Response:
        return await client.patch(f"/api/sources/jobs/{job_id}", json=body, headers=auth("agent"))

    # 1. queued -> running (claim) -> progress -> succeeded
    job = (await client.post(f"/api/sources/{sid}/reindex", headers=auth("admin"))).json()
    assert (await patch(job["job_id"], {"status": "succeeded"})).status_code == 409  # not running
    assert (await patch(job["job_id"], {"status": "failed"})).status_code == 409
    r = await client.post(
        "/api/sources/jobs/claim", json={"agent": "indexer-1"}, headers=auth("agent")
    )
    assert r.status_code == 200
    claimed = r.json()
    assert (claimed["job_id"], claimed["status"], claimed["agent"]) == (
        job["job_id"],
        "running",
        "indexer-1",
    )
    assert claimed["started_at"] is not None
    assert claimed["source"]["config"]["project_key"] == "OPS"
    assert (await source())["status"] == "indexing"
    assert (await client.post("/api/sources/jobs/claim", headers=auth("agent"))).status_code == 204

    r = await patch(job["job_id"], {"progress": 0.4})
    assert (r.status_code, r.json()["progress"], r.json()["status"]) == (200, 0.4, "running")
    for bad in ({"progress": 1.5}, {"progress": -0.1}, {"status": "done"}, {"extra": 1}):
        assert (await patch(job["job_id"], bad)).status_code == 422, bad
    assert (await patch(job["job_id"], {"status": "queued"})).status_code == 409
    r = await patch(job["job_id"], {"status": "succeeded"})
    assert (r.json()["status"], r.json()["progress"]) == ("succeeded", 1.0)
    assert r.json()["finished_at"] is not None
    s = await source()
    assert s["status"] == "ready"
    assert s["last_indexed_at"] == r.json()["finished_at"]
    # Ended: a repeat is harmless, any change is 409.
    assert (await patch(job["job_id"], {"status": "succeeded"})).status_code == 200
    for body in (
        {"status": "failed"},
        {"status": "cancelled"},
        {"progress": 0.5},
        {"status": "running"},
    ):
        r = await patch(job["job_id"], body)
        assert r.status_code == 409, body
        assert r.json()["current_status"] == "succeeded"

    # 2. a failing run
    job2 = await client.post(f"/api/sources/{sid}/reindex", headers=auth("admin"))
    assert job2.status_code == 202
    job2_id = job2.json()["job_id"]
    assert job2_id != job["job_id"]
    assert (await patch(job2_id, {"status": "running"})).status_code == 200
    r = await patch(job2_id, {"status": "failed", "error": "401 from Jira"})
    assert (r.json()["status"], r.json()["error"]) == ("failed", "401 from Jira")
    s = await source()
    assert (s["status"], s["last_error"]) == ("failed", "401 from Jira")
    assert s["last_indexed_at"] is not None  # from the earlier run

    # 3. cancelled while queued, then while running
    job3 = (await client.post(f"/api/sources/{sid}/reindex", headers=auth("admin"))).json()
    assert (await patch(job3["job_id"], {"status": "cancelled"})).json()["status"] == "cancelled"
    assert (await patch(job3["job_id"], {"status": "running"})).status_code == 409
    job4 = (await client.post(f"/api/sources/{sid}/reindex", headers=auth("admin"))).json()
    await client.post("/api/sources/jobs/claim", headers=auth("agent"))
    assert (await patch(job4["job_id"], {"status": "cancelled"})).status_code == 200
    assert (await source())["status"] == "failed"  # what the last finished run left

    jobs = (await client.get(f"/api/sources/{sid}/jobs", headers=auth("user"))).json()
    assert [j["job_id"] for j in jobs["items"]] == [
        job4["job_id"],
        job3["job_id"],
        job2_id,
        job["job_id"],
    ]
    assert (await source())["latest_job"]["job_id"] == job4["job_id"]
    assert (await patch("nope", {"progress": 0.1})).status_code == 404

    events = [p for channel, p in published if channel == "sources"]
    assert all(p["type"] == "source_job" for p in events)
    seen = [(p["job"]["job_id"], p["job"]["status"]) for p in events]
    assert seen[:4] == [
        (job["job_id"], "queued"),
        (job["job_id"], "running"),
        (job["job_id"], "running"),  # progress
        (job["job_id"], "succeeded"),
    ]
    assert seen[-1] == (job4["job_id"], "cancelled")


async def test_claims_take_the_oldest_and_never_twice(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    ids = []
    for n in range(6):
        sid = (
            await _create(
                client, auth, {"type": "github_repo", "config": {"owner": "o", "repo": f"r{n}"}}
            )
        )["source_id"]
        ids.append(
            (await client.post(f"/api/sources/{sid}/reindex", headers=auth("admin"))).json()[
                "job_id"
            ]
        )
    first = (await client.post("/api/sources/jobs/claim", headers=auth("agent"))).json()
    assert first["job_id"] == ids[0]
    answers = await asyncio.gather(
        *(
            client.post("/api/sources/jobs/claim", json={"agent": f"a{i}"}, headers=auth("agent"))
            for i in range(8)
        )
    )
    got = [a.json()["job_id"] for a in answers if a.status_code == 200]
    assert sorted(got) == sorted(ids[1:])
    assert sum(a.status_code == 204 for a in answers) == 3


async def test_delete_cancels_active_jobs(
    client: httpx.AsyncClient,
    auth: Auth,
    published: list[tuple[str, dict[str, Any]]],
) -> None:
    running_src = (await _create(client, auth, GITHUB))["source_id"]
    queued_src = (await _create(client, auth, JIRA))["source_id"]
    running = (
        await client.post(f"/api/sources/{running_src}/reindex", headers=auth("admin"))
    ).json()
    await client.post("/api/sources/jobs/claim", headers=auth("agent"))
    queued = (await client.post(f"/api/sources/{queued_src}/reindex", headers=auth("admin"))).json()

    for sid in (running_src, queued_src):
        assert (
            await client.delete(f"/api/sources/{sid}", headers=auth("admin"))
        ).status_code == 204
        assert (await client.get(f"/api/sources/{sid}", headers=auth("user"))).status_code == 404
        assert (
            await client.get(f"/api/sources/{sid}/jobs", headers=auth("user"))
        ).status_code == 404
        assert (
            await client.post(f"/api/sources/{sid}/reindex", headers=auth("admin"))
        ).status_code == 404
        assert (
            await client.delete(f"/api/sources/{sid}", headers=auth("admin"))
        ).status_code == 404

    # The indexer's next report learns that its job was cancelled; nothing is left to claim.
    r = await client.patch(
        f"/api/sources/jobs/{running['job_id']}", json={"progress": 0.9}, headers=auth("agent")
    )
    assert (r.status_code, r.json()["current_status"]) == (409, "cancelled")
    assert (await client.post("/api/sources/jobs/claim", headers=auth("agent"))).status_code == 204
    cancelled = {
        p["job"]["job_id"]
        for c, p in published
        if c == "sources" and p["job"]["status"] == "cancelled"
    }
    assert cancelled == {running["job_id"], queued["job_id"]}
    # The identity is free again.
    await _create(client, auth, GITHUB)


@pytest.mark.parametrize("per_page", [1, 2])
async def test_jobs_pagination(client: httpx.AsyncClient, auth: Auth, per_page: int) -> None:
    sid = (await _create(client, auth, GITHUB))["source_id"]
    made = []
    for _ in range(3):
        job = (await client.post(f"/api/sources/{sid}/reindex", headers=auth("admin"))).json()
        await client.patch(
            f"/api/sources/jobs/{job['job_id']}",
            json={"status": "cancelled"},
            headers=auth("agent"),
        )
        made.append(job["job_id"])
    walked: list[str] = []
    params: dict[str, Any] = {"per_page": per_page}
    while True:
        page = (
            await client.get(f"/api/sources/{sid}/jobs", params=params, headers=auth("user"))
        ).json()
        assert page["total"] == 3
        walked += [j["job_id"] for j in page["items"]]
        if not page["next_cursor"]:
            break
        params = {"per_page": per_page, "cursor": page["next_cursor"]}
    assert walked == made[::-1]
