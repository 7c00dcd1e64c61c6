"""Knowledge sources and re-index jobs on the wire (docs/api.md §9)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from dashboard_api.schemas.common import ApiModel
from dashboard_api.timeutil import UtcDateTime

SourceType = Literal["github_repo", "jira_project", "confluence_space"]
SourceStatus = Literal["pending", "indexing", "ready", "failed"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

GITHUB_OWNER_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$"
GITHUB_REPO_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"
# A git ref name, kept simple: no spaces, control characters or `~^:?*[\@`, no `..`.
BRANCH_PATTERN = r"^[A-Za-z0-9._/+-]{1,255}$"
JIRA_PROJECT_KEY_PATTERN = r"^[A-Z][A-Z0-9_]{1,9}$"
CONFLUENCE_SPACE_KEY_PATTERN = r"^[A-Za-z0-9~]{1,255}$"


# An absolute https URL with a host, no credentials, no query or fragment, no spaces, and
# a valid port if any. The pattern is the whole rule, so the schema states exactly what
# is accepted; the URL is kept without a trailing `/`.
HTTPS_URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]://[^\s/?#@\[\]:]{1,253}"
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
    r"(?:/[^\s?#]*)?$"
)

HttpsUrl = Annotated[
    str,
    StringConstraints(max_length=2048, pattern=HTTPS_URL_PATTERN),
    AfterValidator(lambda value: value.rstrip("/")),
]
Glob = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f]+$")]


class GithubRepoConfig(ApiModel):
    owner: Annotated[str, StringConstraints(pattern=GITHUB_OWNER_PATTERN)]
    repo: Annotated[str, StringConstraints(pattern=GITHUB_REPO_PATTERN)]
    branch: Annotated[str, StringConstraints(pattern=BRANCH_PATTERN)] | None = Field(
        default=None, description="Absent: the repository's default branch."
    )
    include_paths: Annotated[list[Glob], Field(max_length=200)] | None = None

    @field_validator("repo")
    @classmethod
    def _not_dots(cls, value: str) -> str:
        if value in {".", ".."}:
            raise ValueError("`.` and `..` are not repository names")
        return value

    @field_validator("branch")
    @classmethod
    def _ref_rules(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if ".." in value or "//" in value or value.startswith(("/", "-", ".")):
            raise ValueError("is not a valid branch name")
        if value.endswith(("/", ".", ".lock")):
            raise ValueError("is not a valid branch name")
        return value


class JiraProjectConfig(ApiModel):
    site_url: HttpsUrl
    project_key: Annotated[str, StringConstraints(pattern=JIRA_PROJECT_KEY_PATTERN)]
    jql: Annotated[str, StringConstraints(min_length=1, max_length=10_000)] | None = None


class ConfluenceSpaceConfig(ApiModel):
    site_url: HttpsUrl
    space_key: Annotated[str, StringConstraints(pattern=CONFLUENCE_SPACE_KEY_PATTERN)]


Name = Annotated[str, StringConstraints(min_length=1, max_length=255, strip_whitespace=True)]


class GithubRepoSourceCreate(ApiModel):
    type: Literal["github_repo"]
    config: GithubRepoConfig
    name: Name | None = None
    enabled: bool = True


class JiraProjectSourceCreate(ApiModel):
    type: Literal["jira_project"]
    config: JiraProjectConfig
    name: Name | None = None
    enabled: bool = True


class ConfluenceSpaceSourceCreate(ApiModel):
    type: Literal["confluence_space"]
    config: ConfluenceSpaceConfig
    name: Name | None = None
    enabled: bool = True


# The body of `POST /api/sources`: the `type` picks which `config` shape applies.
SourceCreate = Annotated[
    GithubRepoSourceCreate | JiraProjectSourceCreate | ConfluenceSpaceSourceCreate,
    Field(discriminator="type"),
]


class JobPublic(BaseModel):
    job_id: str
    source_id: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    error: str | None
    agent: str | None = Field(default=None, description="Who claimed it.")
    lease_expires_at: UtcDateTime | None = Field(
        default=None,
        description="While running: when the job fails unless a PATCH renews its lease.",
    )


class SourcePublic(BaseModel):
    source_id: str
    type: SourceType
    name: str
    config: dict[str, Any]
    enabled: bool
    status: SourceStatus
    last_indexed_at: UtcDateTime | None
    last_error: str | None
    created_at: UtcDateTime
    latest_job: JobPublic | None


class ClaimedJob(JobPublic):
    """A claimed job, with what the indexer needs to know about its source."""

    source: SourcePublic | None = None


class JobClaim(ApiModel):
    agent: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    lease_seconds: Annotated[int, Field(ge=10, le=86_400)] | None = Field(
        default=None,
        description="Lease length (default DASHBOARD_TASK_LEASE_SECONDS); each PATCH renews it.",
    )


class JobUpdate(ApiModel):
    """Progress report or status move of a job (agent)."""

    status: JobStatus | None = None
    progress: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    error: Annotated[str, StringConstraints(max_length=100_000)] | None = None


def job_public(j: Any) -> JobPublic:
    """The API form of an `IndexJob` row."""
    return JobPublic(
        job_id=j.job_id,
        source_id=j.source_id,
        status=j.status,
        progress=j.progress,
        created_at=j.created_at,
        started_at=j.started_at,
        finished_at=j.finished_at,
        error=j.error,
        agent=j.agent,
        lease_expires_at=j.lease_expires_at,
    )


def source_public(s: Any, latest_job: Any | None) -> SourcePublic:
    """The API form of a `DataSource` row with its newest job."""
    return SourcePublic(
        source_id=s.source_id,
        type=s.type,
        name=s.name,
        config=s.config,
        enabled=s.enabled,
        status=s.status,
        last_indexed_at=s.last_indexed_at,
        last_error=s.last_error,
        created_at=s.created_at,
        latest_job=job_public(latest_job) if latest_job is not None else None,
    )
