"""OTLP/HTTP on the wire: content types, gzip, size limits, and the messages both ways.

Bodies are decoded with the official message classes of `opentelemetry-proto`: binary
protobuf as is, JSON through protobuf's JSON mapping after the one documented change of
OTLP/JSON (trace and span ids are hex strings, not base64). Answers follow the OTLP/HTTP
specification: 200 with an `ExportTraceServiceResponse` in the request's encoding
(`partial_success` when spans were rejected); a failure is a `google.rpc.Status` — as
protobuf for a protobuf request, else inside an RFC 9457 problem document (its `code`
and `message` members are those of the Status' JSON form).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any, Literal

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from dashboard_api.errors import BadRequest, PayloadTooLarge, ProblemError, problem_body

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
Encoding = Literal["protobuf", "json"]


class UnsupportedMediaType(ProblemError):
    status, title = 415, "Unsupported Media Type"


def encoding_or_none(content_type: str | None) -> Encoding | None:
    """The body's encoding from its Content-Type, None for anything but OTLP's two."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        return "protobuf"
    if media == JSON:
        return "json"
    return None


def encoding_of(content_type: str | None) -> Encoding:
    """The body's encoding from its Content-Type; 415 for anything but OTLP's two."""
    encoding = encoding_or_none(content_type)
    if encoding is not None:
        return encoding
    media = (content_type or "").split(";", 1)[0].strip().lower()
    raise UnsupportedMediaType(
        f"Content-Type must be {PROTOBUF} or {JSON} (OTLP/HTTP), not {media or 'missing'!r}."
    )


def inflate(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body without its Content-Encoding (identity, gzip or deflate), at most
    `max_bytes` once decompressed (413 past it, as OTLP/HTTP asks); 400 for a broken
    stream."""
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("identity", ""):
        return body
    if coding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding must be gzip, deflate or identity, not {coding!r}."
        )
    # gzip members (OTLP/HTTP), or zlib's format for deflate (the SDK exporters offer it).
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    out = bytearray()
    rest = body
    try:
        while rest:
            stream = zlib.decompressobj(wbits)
            out += stream.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise PayloadTooLarge(f"The request body is over {max_bytes} bytes decompressed.")
            if not stream.eof:
                raise BadRequest(f"The {coding} body is truncated.")
            rest = stream.unused_data  # another member follows
    except zlib.error as exc:
        raise BadRequest(f"The body is not valid {coding}: {exc}.") from None
    return bytes(out)


def decode(body: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    """The `ExportTraceServiceRequest` of a body; 400 when it is not one."""
    request = ExportTraceServiceRequest()
    if encoding == "protobuf":
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise BadRequest(
                f"The body is not a protobuf ExportTraceServiceRequest: {exc}"
            ) from None
        return request
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("The JSON body must be an object (an ExportTraceServiceRequest).")
    _hex_ids_to_base64(doc)
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        message = str(exc)[:500] or type(exc).__name__
        raise BadRequest(f"The JSON body is not an ExportTraceServiceRequest: {message}") from None
    return request


# OTLP/JSON writes these bytes fields as hex (protobuf's JSON mapping would use base64).
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(doc: dict[str, Any]) -> None:
    for resource in _items(doc, "resourceSpans", "resource_spans"):
        for scope in _items(resource, "scopeSpans", "scope_spans"):
            for span in _items(scope, "spans"):
                _convert_ids(span)
                for link in _items(span, "links"):
                    _convert_ids(link)


def _items(doc: Any, *keys: str) -> list[Any]:
    if not isinstance(doc, dict):
        return []
    for key in keys:
        value = doc.get(key)
        if isinstance(value, list):
            return value
    return []


def _convert_ids(doc: Any) -> None:
    if not isinstance(doc, dict):
        return
    for key in _ID_KEYS:
        value = doc.get(key)
        if isinstance(value, str) and value:
            try:
                raw = binascii.unhexlify(value)
            except (binascii.Error, ValueError):
                raise BadRequest(
                    f"{key} must be a hex string (OTLP/JSON), not {value[:64]!r}."
                ) from None
            doc[key] = base64.b64encode(raw).decode()


def success(encoding: Encoding, rejected: int, message: str) -> bytes:
    """The body of a 200: an `ExportTraceServiceResponse`, with `partial_success` set when
    spans were rejected (or a warning is due)."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        )
    if encoding == "protobuf":
        return bytes(response.SerializeToString())
    return orjson.dumps(json_format.MessageToDict(response))


# google.rpc.Code of each HTTP status a failure can have (OTLP leaves it optional).
_RPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 413: 8, 415: 3, 422: 3, 429: 8, 503: 14}


def failure(encoding: Encoding | None, error: ProblemError) -> tuple[bytes, str]:
    """(body, media type) of a failed request: a protobuf `google.rpc.Status` for a
    protobuf request, else a problem document that carries the Status' members too."""
    code = _RPC_CODES.get(error.status, 2)  # 2: UNKNOWN
    if encoding == "protobuf":
        return bytes(Status(code=code, message=error.detail).SerializeToString()), PROTOBUF
    doc = problem_body(error.status, error.title, error.detail, **error.extra)
    doc.update(code=code, message=error.detail)
    return orjson.dumps(doc), PROBLEM_JSON
