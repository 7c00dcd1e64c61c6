"""`POST /v1/traces`: OTLP/HTTP traces in (docs/api.md §17; docs/otlp.md)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dashboard_api.api.deps import CtxDep
from dashboard_api.errors import Forbidden, PayloadTooLarge, ProblemError
from dashboard_api.otlp import wire
from dashboard_api.otlp.spans import Limits, SpanFacts, request_facts
from dashboard_api.otlp.store import OutputLimits, store_spans
from dashboard_api.services.authentication import authenticate

log = logging.getLogger("dashboard_api.otlp")

router = APIRouter(tags=["opentelemetry"])
# The token is checked in the route (not by a raising dependency), so that its failures
# are answered in the request's OTLP encoding like every other.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")

_STATUS_DOC = "A `google.rpc.Status` (protobuf requests)"
_REQUEST_BODY = {
    "required": True,
    "description": "An OTLP `ExportTraceServiceRequest`, binary protobuf or OTLP/JSON, "
    "optionally with `Content-Encoding: gzip`.",
    "content": {
        wire.PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        wire.JSON: {"schema": {"type": "object"}},
    },
}


def _failure_doc(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            wire.PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}},
            wire.PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        },
    }


@router.post(
    "/v1/traces",
    summary="Export traces (OTLP/HTTP)",
    response_class=Response,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        200: {
            "description": "An `ExportTraceServiceResponse` in the request's encoding; "
            "`partialSuccess` names the spans rejected and why.",
            "content": {
                wire.PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                wire.JSON: {"schema": {"type": "object"}},
            },
        },
        400: _failure_doc("The body is not an ExportTraceServiceRequest (or not gzip)."),
        401: _failure_doc("No or bad token."),
        403: _failure_doc("The token's role is not agent or admin."),
        413: _failure_doc("Body (decompressed too) or span count over the limit."),
        415: _failure_doc("Content-Type or Content-Encoding that OTLP/HTTP does not use."),
        429: _failure_doc("Rate limit of the token."),
    },
)
async def export_traces(
    request: Request,
    ctx: CtxDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    """OpenTelemetry spans in (agent role): GenAI invocations become tasks (docs/api.md §17).

    Answers as an OTLP collector does: 200 with an `ExportTraceServiceResponse`, in the
    request's encoding; failures as `google.rpc.Status` for protobuf requests (an RFC 9457
    problem document otherwise)."""
    content_type = request.headers.get("content-type")
    encoding = wire.encoding_or_none(content_type)
    try:
        principal = await authenticate(ctx, credentials.credentials if credentials else None)
        if principal.role not in ("admin", "agent"):
            raise Forbidden("This needs one of the roles: admin, agent.")
        encoding = wire.encoding_of(content_type)
        settings = ctx.settings
        body = await _read_body(request, settings.otlp_max_body_bytes)
        body = wire.inflate(
            body, request.headers.get("content-encoding"), settings.otlp_max_body_bytes
        )
        export = wire.decode(body, encoding)
        spans, rejected = _facts(export, settings)
        stored = await store_spans(
            ctx.db,
            spans,
            now=ctx.clock.now(),
            prices=ctx.prices,
            output=OutputLimits(settings.output_cap_bytes),
        )
    except ProblemError as error:
        content, media = wire.failure(encoding, error)
        return Response(content, status_code=error.status, media_type=media, headers=error.headers)
    if stored.created or stored.updated:
        log.debug("otlp: %d tasks created, %d updated", len(stored.created), len(stored.updated))
    message = _rejection_message(rejected)
    media = wire.PROTOBUF if encoding == "protobuf" else wire.JSON
    return Response(wire.success(encoding, sum(rejected.values()), message), media_type=media)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `max_bytes`."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    return bytes(body)


def _facts(export: Any, settings: Any) -> tuple[list[SpanFacts], Counter[str]]:
    """The facts of every span of the request, and the reasons for those rejected."""
    total = sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans)
    if total > settings.otlp_max_spans_per_request:
        raise PayloadTooLarge(
            f"{total} spans in one request; at most {settings.otlp_max_spans_per_request} "
            "(lower the exporter's batch size)."
        )
    return request_facts(
        export, Limits(settings.otlp_max_attribute_chars, settings.otlp_max_events_per_span)
    )


def _rejection_message(rejected: Counter[str]) -> str:
    if not rejected:
        return ""
    parts = [f"{n} with {reason}" for reason, n in sorted(rejected.items())]
    return f"{sum(rejected.values())} spans rejected: " + "; ".join(parts) + "."
