"""Shapes shared by every feature: the list envelope and the problem document."""

from __future__ import annotations

import types
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Generic,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from dashboard_api.db.paging import PageResult

T = TypeVar("T")


def _takes_int(annotation: Any) -> bool:
    """Whether a field's type admits an int (through Optional, unions and Annotated)."""
    if annotation is int:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_int(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(_takes_int(arg) for arg in get_args(annotation))
    return False


class ApiModel(BaseModel):
    """Base of request bodies: unknown fields are refused so that typos surface as 422, and
    values are taken only in the JSON type the schema gives them (strict: `"5"` is no
    integer, `1` no boolean, a number no timestamp; see `timeutil.UtcDateTime`).

    JSON Schema counts `5.0` as an integer, so an integer field takes an integral number
    written with a fraction too (and nothing else that strict mode refuses).
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    _integer_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._integer_fields = frozenset(
            name for name, field in cls.model_fields.items() if _takes_int(field.annotation)
        )

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls._integer_fields:
            return data
        fixed = {
            name: int(value)
            for name in cls._integer_fields
            if isinstance(value := data.get(name), float) and value.is_integer()
        }
        return {**data, **fixed} if fixed else data


class Page(BaseModel, Generic[T]):
    """The list envelope of docs/api.md §1."""

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
