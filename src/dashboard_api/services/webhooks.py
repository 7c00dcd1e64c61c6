"""Webhooks: provider signatures, delivery records, idempotency, tasks from events, stats."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import emit
from dashboard_api.db.models.webhooks import WEBHOOK_SOURCES, WebhookConfig, WebhookEvent
from dashboard_api.db.paging import Ordering, PageRequest, PageResult, paginate
from dashboard_api.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, ProblemError
from dashboard_api.ids import new_id
from dashboard_api.schemas.tasks import TaskCreate
from dashboard_api.schemas.webhooks import (
    SourceStats,
    WebhookConfigPublic,
    WebhookConfigUpdate,
    WebhookEventCreate,
    WebhookEventPublic,
    event_public,
)
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.secrets_box import seal, unseal
from dashboard_api.services.tasks import register_task

RECEIVE_PATH = "/api/webhooks/{source}/receive"
_NEWEST_FIRST = Ordering(
    "-received_at", (WebhookEvent.received_at, WebhookEvent.event_id), descending=True
)
_MAX_TEXT = 255
# Delivery ids are unique per provider among successful deliveries only (partial index).
_DELIVERY_CONFLICT: dict[str, Any] = {
    "index_elements": [WebhookEvent.source, WebhookEvent.delivery_id],
    # Literal SQL: PostgreSQL matches the partial index by its predicate, not by parameters.
    "index_where": text("status = 'success' AND delivery_id IS NOT NULL"),
}


# Every detail a `SignatureRejected` carries (stored as the failed event's `error`): the
# `webhook_signature_failures` alert rule counts the failed events that hold one
# (tests/alerts/test_rules.py checks that each raise below is listed).
SIGNATURE_REJECTIONS = (
    "Missing X-Hub-Signature-256.",
    "Missing X-Hub-Signature.",
    "Missing X-Slack-Signature or X-Slack-Request-Timestamp.",
    "X-Slack-Request-Timestamp is not a number.",
    "X-Slack-Request-Timestamp is too far from now.",
    "The signature does not match.",
)


class SignatureRejected(ProblemError):
    """401 without `WWW-Authenticate: Bearer` (this is not a bearer-token endpoint)."""

    status, title = 401, "Unauthorized"


def require_source(source: str) -> str:
    """The provider name, or 404 for one we do not know."""
    if source not in WEBHOOK_SOURCES:
        raise NotFound(f"No webhook source {source!r}. Known: {', '.join(WEBHOOK_SOURCES)}.")
    return source


# --- configs -----------------------------------------------------------------------------


async def _config_rows(session: AsyncSession) -> dict[str, WebhookConfig]:
    rows = (await session.scalars(select(WebhookConfig))).all()
    return {r.source: r for r in rows}


async def list_configs(session: AsyncSession, *, now: datetime) -> list[WebhookConfigPublic]:
    """All three providers' configs (defaults for those never configured) with health."""
    configs = await _config_rows(session)
    stats: dict[str, SourceStats] = {
        s.source: s for s in await stats_by_source(session, start=now - timedelta(days=1), end=now)
    }
    last = dict(
        (
            await session.execute(
                select(WebhookEvent.source, func.max(WebhookEvent.received_at)).group_by(
                    WebhookEvent.source
                )
            )
        ).all()
    )
    return [
        _config_public(source, configs.get(source), stats[source], last.get(source))
        for source in WEBHOOK_SOURCES
    ]


def _config_public(
    source: str, row: WebhookConfig | None, stats: SourceStats, last: datetime | None
) -> WebhookConfigPublic:
    return WebhookConfigPublic(
        source=source,
        enabled=row.enabled if row is not None else True,
        configured=row is not None and row.sealed_secret is not None,
        receive_path=RECEIVE_PATH.format(source=source),
        last_received_at=last,
        events_24h=stats.total,
        success_rate_24h=stats.success_rate,
    )


async def update_config(
    session: AsyncSession, *, source: str, body: WebhookConfigUpdate, key: bytes, now: datetime
) -> WebhookConfigPublic:
    """Set `enabled` and/or the secret (`null` unsets it); fields left out stay."""
    require_source(source)
    # Make the row exist (race-free), then lock it for the change.
    await session.execute(
        dialect_of(session)
        .insert(WebhookConfig.__table__)  # type: ignore[arg-type]
        .values(source=source, enabled=True, secret=None, updated_at=now)
        .on_conflict_do_nothing(index_elements=[WebhookConfig.source])
    )
    stmt = dialect_of(session).lock_for_update(
        select(WebhookConfig).where(WebhookConfig.source == source)
    )
    row = (await session.scalars(stmt.execution_options(populate_existing=True))).one()
    fields = body.model_fields_set
    if "enabled" in fields and body.enabled is not None:
        row.enabled = body.enabled
    if "secret" in fields:
        secret = body.secret
        row.sealed_secret = seal(secret.get_secret_value(), key) if secret is not None else None
    row.updated_at = now
    await session.flush()
    (public,) = [c for c in await list_configs(session, now=now) if c.source == source]
    return public


# --- receiving ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """A delivery that passed every check: what to record."""

    event_type: str
    delivery_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReceiveOutcome:
    """What happened to one delivery. `problem` is raised by the caller after the commit."""

    event: WebhookEvent
    duplicate: bool
    problem: ProblemError | None = None
    challenge: Any = None


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _signature_matches(header: str | None, prefix: str, expected_hex: str) -> bool:
    """Constant-time check of `<prefix><hex>` against the expected digest."""
    if not header or not header.startswith(prefix):
        return False
    given = header[len(prefix) :].strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(given, expected_hex.encode())


def _loads_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _clip(value: object) -> str | None:
    return value[:_MAX_TEXT] if isinstance(value, str) and value else None


def _event_type(source: str, headers: Mapping[str, str], payload: dict[str, Any] | None) -> str:
    """The event type of docs/api.md §7; `unknown` when the delivery does not say."""
    payload = payload or {}
    if source == "github":
        name = headers.get("x-github-event") or "unknown"
        action = payload.get("action")
        return f"{name}.{action}" if isinstance(action, str) and action else name
    if source == "jira":
        return _clip(payload.get("webhookEvent")) or "unknown"
    if payload.get("type") == "url_verification":
        return "url_verification"
    inner = payload.get("event")
    if isinstance(inner, dict) and _clip(inner.get("type")):
        return str(inner["type"])
    return _clip(payload.get("type")) or "unknown"


def _delivery_id(
    source: str, headers: Mapping[str, str], payload: dict[str, Any] | None
) -> str | None:
    if source == "github":
        return _clip(headers.get("x-github-delivery"))
    if source == "jira":
        return _clip(headers.get("x-atlassian-webhook-identifier"))
    return _clip((payload or {}).get("event_id"))


def verify_delivery(
    source: str,
    *,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    slack_tolerance_seconds: int,
) -> Verified:
    """Check the provider's signature, then the body; raises the problem to answer with."""
    if source == "github":
        header, prefix, signed = headers.get("x-hub-signature-256"), "sha256=", body
        if not header:
            raise SignatureRejected("Missing X-Hub-Signature-256.")
    elif source == "jira":
        header, prefix, signed = headers.get("x-hub-signature"), "sha256=", body
        if not header:
            raise SignatureRejected("Missing X-Hub-Signature.")
    else:
        header, prefix = headers.get("x-slack-signature"), "v0="
        stamp = headers.get("x-slack-request-timestamp")
        if not header or not stamp:
            raise SignatureRejected("Missing X-Slack-Signature or X-Slack-Request-Timestamp.")
        try:
            sent = int(stamp)
        except ValueError:
            raise SignatureRejected("X-Slack-Request-Timestamp is not a number.") from None
        # A replayed request carries an old (validly signed) timestamp.
        if abs(now.timestamp() - sent) > slack_tolerance_seconds:
            raise SignatureRejected("X-Slack-Request-Timestamp is too far from now.")
        signed = b"v0:" + stamp.encode() + b":" + body
    if not _signature_matches(header, prefix, _hmac_hex(secret, signed)):
        raise SignatureRejected("The signature does not match.")

    if source == "github" and not (
        headers.get("x-github-event") and headers.get("x-github-delivery")
    ):
        raise BadRequest("Missing X-GitHub-Event or X-GitHub-Delivery.")
    payload = _loads_object(body)
    if payload is None:
        raise BadRequest("The body is not a JSON object.")
    return Verified(
        event_type=_event_type(source, headers, payload)[:_MAX_TEXT],
        delivery_id=_delivery_id(source, headers, payload),
        payload=payload,
    )


async def receive(
    session: AsyncSession,
    *,
    source: str,
    headers: Mapping[str, str],
    body: bytes,
    complete: bool,
    size: int | None = None,
    now: datetime,
    max_body_bytes: int,
    slack_tolerance_seconds: int,
    create_tasks: bool,
    agent_type: str,
    key: bytes,
    prices: PriceTable,
) -> ReceiveOutcome:
    """Verify and record one delivery (failures too); may create a task from it.

    `headers` has lower-case names; `complete` is false when the body was over the limit
    (then `size` is how big it said or was seen to be).
    """
    require_source(source)
    config = await session.get(WebhookConfig, source)
    try:
        if not complete:
            raise PayloadTooLarge(f"The body is over {max_body_bytes} bytes.")
        if config is None or config.sealed_secret is None:
            raise Forbidden(f"The {source} webhook has no secret configured.")
        secret = unseal(config.sealed_secret, key)
        if secret is None:
            raise Forbidden(
                f"The {source} webhook secret cannot be read with this key; set it again."
            )
        if not config.enabled:
            raise Forbidden(f"The {source} webhook is disabled.")
        verified = verify_delivery(
            source,
            secret=secret,
            headers=headers,
            body=body,
            now=now,
            slack_tolerance_seconds=slack_tolerance_seconds,
        )
    except ProblemError as problem:
        # Unverified: note what it claims to be, but keep none of its payload.
        guess = _loads_object(body) if complete else None
        event = WebhookEvent(
            event_id=new_id(),
            source=source,
            event_type=_event_type(source, headers, guess)[:_MAX_TEXT],
            delivery_id=_delivery_id(source, headers, guess),
            status="failed",
            error=problem.detail,
            received_at=now,
            payload_bytes=size if size is not None else len(body),
            payload=None,
            task_id=None,
        )
        session.add(event)
        await session.flush()
        _publish(session, event)
        return ReceiveOutcome(event=event, duplicate=False, problem=problem)

    task_body = _task_from_event(source, verified, agent_type) if create_tasks else None
    event, created = await _insert_success(
        session,
        source=source,
        event_type=verified.event_type,
        delivery_id=verified.delivery_id,
        received_at=now,
        payload_bytes=len(body),
        payload=verified.payload,
        task_id=task_body.task_id if task_body is not None else None,
        error=None,
    )
    if created and task_body is not None:
        await register_task(session, body=task_body, now=now, prices=prices)
    challenge = (
        verified.payload.get("challenge") if verified.event_type == "url_verification" else None
    )
    return ReceiveOutcome(event=event, duplicate=not created, challenge=challenge)


async def _insert_success(
    session: AsyncSession, *, source: str, delivery_id: str | None, **values: Any
) -> tuple[WebhookEvent, bool]:
    """Insert a successful event unless its delivery id was seen: (event, created)."""
    event_id = new_id()
    stmt = (
        dialect_of(session)
        .insert(WebhookEvent.__table__)  # type: ignore[arg-type]
        .values(
            event_id=event_id, source=source, delivery_id=delivery_id, status="success", **values
        )
        .on_conflict_do_nothing(**_DELIVERY_CONFLICT)
        .returning(WebhookEvent.event_id)
    )
    inserted = (await session.execute(stmt)).scalar_one_or_none()
    if inserted is None:
        existing = (
            await session.scalars(
                select(WebhookEvent).where(
                    WebhookEvent.source == source,
                    WebhookEvent.delivery_id == delivery_id,
                    WebhookEvent.status == "success",
                )
            )
        ).one()
        return existing, False
    event = await session.get(WebhookEvent, event_id)
    assert event is not None
    _publish(session, event)
    return event, True


def _publish(session: AsyncSession, event: WebhookEvent) -> None:
    emit(
        session,
        "webhooks",
        {"type": "webhook_event", "event": event_public(event).model_dump(mode="json")},
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _task_from_event(source: str, verified: Verified, agent_type: str) -> TaskCreate | None:
    """A task for events that ask for work; None for the rest.

    GitHub `issues.opened` and `issue_comment.created`, Jira `jira:issue_created` and
    `comment_created`, Slack `app_mention`. Events sent by bots are skipped, so that an
    agent's own comments do not start new tasks in a loop.
    """
    p, kind = verified.payload, verified.event_type
    message: str | None = None
    url: str | None = None
    if source == "github":
        sender = p.get("sender")
        if isinstance(sender, dict) and sender.get("type") == "Bot":
            return None
        issue = _obj(p.get("issue"))
        if kind == "issues.opened":
            message = f"{_text(issue.get('title'))}\n\n{_text(issue.get('body'))}".strip()
            url = _text(issue.get("html_url"))
        elif kind == "issue_comment.created":
            comment = _obj(p.get("comment"))
            message = _text(comment.get("body"))
            url = _text(comment.get("html_url"))
    elif source == "jira":
        if kind == "jira:issue_created":
            issue = _obj(p.get("issue"))
            fields = _obj(issue.get("fields"))
            summary, description = _text(fields.get("summary")), _text(fields.get("description"))
            message = f"{summary}\n\n{description}".strip()
            url = _text(issue.get("self"))
        elif kind == "comment_created":
            comment = _obj(p.get("comment"))
            message = _text(comment.get("body"))
            url = _text(comment.get("self"))
    elif kind == "app_mention":
        event = _obj(p.get("event"))
        if event.get("bot_id"):
            return None
        message = _text(event.get("text"))
    if message is None:
        return None
    metadata: dict[str, Any] = {
        "webhook_event_type": kind,
        "webhook_delivery_id": verified.delivery_id,
    }
    if url:
        metadata["url"] = url
    return TaskCreate(
        task_id=new_id(),
        agent_type=agent_type,
        input_message=message[:1_000_000],
        source=source,
        metadata=metadata,
    )


# --- recorded elsewhere ------------------------------------------------------------------


async def record_event(
    session: AsyncSession, *, body: WebhookEventCreate, now: datetime
) -> tuple[WebhookEvent, bool]:
    """Record an event handled elsewhere: (event, created). A repeated successful
    delivery id returns the event already recorded."""
    payload_bytes = len(orjson.dumps(body.payload)) if body.payload is not None else 0
    values: dict[str, Any] = {
        "event_type": body.event_type,
        "received_at": body.received_at or now,
        "payload_bytes": payload_bytes,
        "payload": body.payload,
        "task_id": body.task_id,
        "error": body.error,
    }
    if body.status == "success":
        return await _insert_success(
            session, source=body.source, delivery_id=body.delivery_id, **values
        )
    event = WebhookEvent(
        event_id=new_id(),
        source=body.source,
        delivery_id=body.delivery_id,
        status="failed",
        **values,
    )
    session.add(event)
    await session.flush()
    _publish(session, event)
    return event, True


# --- reads -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilters:
    """The filters of `GET /api/webhooks/events`, already validated."""

    source: Sequence[str] = ()
    status: Sequence[str] = ()
    event_type: Sequence[str] = ()
    start: datetime | None = None
    end: datetime | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        for column, values in (
            (WebhookEvent.source, self.source),
            (WebhookEvent.status, self.status),
            (WebhookEvent.event_type, self.event_type),
        ):
            if values:
                out.append(column.in_(list(values)))
        if self.start is not None:
            out.append(WebhookEvent.received_at >= self.start)
        if self.end is not None:
            out.append(WebhookEvent.received_at < self.end)
        return out


async def list_events(
    session: AsyncSession, *, filters: EventFilters, page: PageRequest
) -> PageResult[WebhookEventPublic]:
    """One page of events, newest first."""
    stmt: Select[Any] = select(WebhookEvent)
    count_stmt = select(func.count()).select_from(WebhookEvent)
    where = filters.clauses()
    if where:
        stmt = stmt.where(*where)
        count_stmt = count_stmt.where(*where)
    return await paginate(
        session,
        stmt,
        _NEWEST_FIRST,
        page,
        convert=lambda row: event_public(row[0]),
        count_stmt=count_stmt,
    )


async def get_event(session: AsyncSession, *, event_id: str) -> WebhookEvent:
    """One event, or 404."""
    event = await session.get(WebhookEvent, event_id)
    if event is None:
        raise NotFound(f"No webhook event {event_id!r}.")
    return event


async def stats_by_source(
    session: AsyncSession, *, start: datetime, end: datetime
) -> list[SourceStats]:
    """Per-provider counts and last times over received_at in [start, end)."""
    ok = WebhookEvent.status == "success"
    bad = WebhookEvent.status == "failed"
    stmt = (
        select(
            WebhookEvent.source,
            func.count(),
            func.coalesce(func.sum(case((ok, 1), else_=0)), 0),
            func.max(WebhookEvent.received_at),
            func.max(case((ok, WebhookEvent.received_at))),
            func.max(case((bad, WebhookEvent.received_at))),
        )
        .where(WebhookEvent.received_at >= start, WebhookEvent.received_at < end)
        .group_by(WebhookEvent.source)
    )
    rows = {r[0]: r for r in (await session.execute(stmt)).all()}
    out = []
    for source in WEBHOOK_SOURCES:
        row = rows.get(source)
        total = int(row[1]) if row else 0
        succeeded = int(row[2]) if row else 0
        out.append(
            SourceStats(
                source=source,
                total=total,
                succeeded=succeeded,
                failed=total - succeeded,
                success_rate=succeeded / total if total else None,
                last_received_at=row[3] if row else None,
                last_success_at=row[4] if row else None,
                last_failure_at=row[5] if row else None,
            )
        )
    return out
