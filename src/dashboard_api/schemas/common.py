"""Shapes shared by every feature: the list envelope and the problem document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from dashboard_api.db.paging import PageResult

T = TypeVar("T")


class ApiModel(BaseModel):
    """Base of request bodies: unknown fields are refused so that typos surface as 422."""

    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    """The list envelope of API.md §1."""

    items: list[T]
    total: int
    page: int | None
    per_page: int
    pages: int
    next_cursor: str | None

    @classmethod
    def of(cls, result: PageResult[Any]) -> Page[T]:
        """The envelope of one page that `db.paging.paginate` produced."""
        return cls(
            items=result.items,
            total=result.total,
            page=result.page,
            per_page=result.per_page,
            pages=result.pages,
            next_cursor=result.next_cursor,
        )


class Items(BaseModel, Generic[T]):
    """A plain, unpaginated collection."""

    items: list[T]


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ValidationErrorItem] | None = Field(
        default=None, description="Present on 422: what failed validation, and where."
    )
    dependency: str | None = Field(default=None, description="Present on 503: what is down.")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem documents for the given statuses."""
    return {
        s: {
            "model": Problem,
            "content": {"application/problem+json": {}},
            "description": _DESC.get(s, "Error"),
        }
        for s in statuses
    }


_DESC = {
    400: "Malformed request",
    401: "Missing or invalid bearer token",
    403: "The token's role may not do this",
    404: "No such resource (or not visible to the caller)",
    409: "Conflicts with the resource's current state",
    413: "Request body too large",
    422: "Validation failed",
    429: "Rate limit exceeded",
    503: "A dependency is unavailable",
}


def problem_description(status: int) -> str:
    """The OpenAPI description of a problem answer with this status."""
    return _DESC.get(status, "Error")
