"""The notification outbox and its sender.

Deliveries are rows written in the transaction that opened or resolved an alert
(`enqueue`), so a notification exists exactly when its alert transition does. The
sender (a periodic job, one replica at a time) claims due rows (`SKIP LOCKED` on
PostgreSQL, so even an overlapping second sender takes other rows), and for each one, in
the claiming transaction, counts the attempt, writes its record and pushes the next try
past the send's deadline. Only after that commit does the request go out; its outcome
then completes the record and schedules the next try (exponential backoff with jitter)
or ends the delivery. So every send has its attempt record, committed before it: a
process killed mid-send leaves a record without an outcome (marked `interrupted` when the
delivery is claimed again, after the in-flight deadline), and a restart retries the
delivery. Receivers deduplicate by `X-Dashboard-Alert-Id` and the alert state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import Database
from dashboard_api.db.models.guards import AlertChannel, AlertDelivery, AlertDeliveryAttempt
from dashboard_api.ids import new_id
from dashboard_api.services.alerts.channels import ChannelUnreadable, Endpoint, endpoint_of
from dashboard_api.services.alerts.formats import slack_body, webhook_body
from dashboard_api.services.alerts.sender import SendOutcome, post
from dashboard_api.services.alerts.signing import notification_headers
from dashboard_api.services.secrets_box import box_key
from dashboard_api.settings import Settings

log = logging.getLogger(__name__)

BATCH = 50  # deliveries claimed per run
CONCURRENCY = 10  # of them in flight at once
INTERRUPTED = "interrupted: the sender stopped before recording an outcome"
_A = AlertDeliveryAttempt.__table__.c
_D = AlertDelivery.__table__.c


def backoff_seconds(attempts: int, settings: Settings, rng: random.Random | None = None) -> float:
    """The wait after the `attempts`-th failure: the first within
    `alerts_retry_first_seconds`, doubling up to `alerts_retry_max_seconds`, each drawn
    from its upper half (jitter: receivers that came back are not hit in lockstep)."""
    ceiling = min(
        settings.alerts_retry_max_seconds,
        settings.alerts_retry_first_seconds * float(2 ** min(attempts - 1, 30)),
    )
    jitter: float = (rng or random).uniform(0.5, 1.0)
    return ceiling * jitter


def enqueue(
    session: AsyncSession,
    *,
    alert_id: str,
    document: dict[str, Any],
    channel_ids: list[str],
    event: str,
    now: datetime,
    settings: Settings,
) -> list[str]:
    """Add one delivery per channel to the caller's transaction; their ids."""
    ids = []
    for channel_id in channel_ids:
        delivery_id = new_id()
        session.add(
            AlertDelivery(
                delivery_id=delivery_id,
                alert_id=alert_id,
                channel_id=channel_id,
                event=event,
                document=document,
                state="pending",
                attempts=0,
                next_attempt_at=now,
                give_up_at=now + timedelta(seconds=settings.alerts_retry_for_seconds),
                created_at=now,
                updated_at=now,
            )
        )
        ids.append(delivery_id)
    return ids


@dataclass(frozen=True, slots=True)
class Claimed:
    """One attempt about to be sent."""

    delivery_id: str
    attempt: int
    alert_id: str
    document: dict[str, Any]
    endpoint: Endpoint | None  # None: the channel is gone or unreadable (`problem`)
    problem: str | None = None


def in_flight_seconds(settings: Settings) -> float:
    """How long a claimed attempt is left alone before another claim may retry it."""
    return settings.alerts_delivery_timeout_seconds + 10.0


async def claim_due(db: Database, *, now: datetime, settings: Settings) -> list[Claimed]:
    """Claim due deliveries and commit their attempt records (before anything is sent)."""
    key = box_key(settings)
    claimed: list[Claimed] = []
    async with db.read() as session:  # the usual case, nothing due, costs no write
        due = await session.scalar(
            select(AlertDelivery.delivery_id)
            .where(AlertDelivery.state == "pending", AlertDelivery.next_attempt_at <= now)
            .limit(1)
        )
    if due is None:
        return []
    async with db.write() as session:
        pick = (
            select(AlertDelivery)
            .where(AlertDelivery.state == "pending", AlertDelivery.next_attempt_at <= now)
            .order_by(AlertDelivery.next_attempt_at)
            .limit(BATCH)
        )
        rows = (await session.scalars(dialect_of(session).lock_skip_locked(pick))).all()
        if not rows:
            return []
        await session.execute(
            update(AlertDeliveryAttempt)
            .where(_A.delivery_id.in_([r.delivery_id for r in rows]), _A.finished_at.is_(None))
            .values(finished_at=now, error=INTERRUPTED)
        )
        channels = {
            c.channel_id: c
            for c in (
                await session.scalars(
                    select(AlertChannel).where(
                        AlertChannel.channel_id.in_({r.channel_id for r in rows})
                    )
                )
            ).all()
        }
        lease = timedelta(seconds=in_flight_seconds(settings))
        for row in rows:
            row.attempts += 1
            row.next_attempt_at = now + lease
            row.updated_at = now
            session.add(
                AlertDeliveryAttempt(
                    delivery_id=row.delivery_id,
                    attempt=row.attempts,
                    alert_id=row.alert_id,
                    channel_id=row.channel_id,
                    at=now,
                )
            )
            channel = channels.get(row.channel_id)
            endpoint, problem = None, None
            if channel is None:
                problem = "the channel no longer exists"
            else:
                try:
                    endpoint = endpoint_of(channel, key)
                except ChannelUnreadable as exc:
                    problem = str(exc)
            claimed.append(
                Claimed(
                    row.delivery_id, row.attempts, row.alert_id, row.document, endpoint, problem
                )
            )
    return claimed


def request_of(
    endpoint: Endpoint, alert_id: str, document: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one send (signed anew each time: a fresh timestamp)."""
    timestamp = str(int(time.time()))
    if endpoint.type == "slack":
        body = slack_body(document)
        return body, {"Content-Type": "application/json", "X-Dashboard-Alert-Id": alert_id}
    body = webhook_body(document)
    headers = notification_headers(
        alert_id=alert_id, timestamp=timestamp, body=body, secret=endpoint.secret
    )
    return body, headers


async def send(
    endpoint: Endpoint, alert_id: str, document: dict[str, Any], settings: Settings
) -> SendOutcome:
    body, headers = request_of(endpoint, alert_id, document)
    return await post(
        endpoint.url,
        body,
        headers,
        allow_private=settings.alerts_allow_private_urls,
        timeout=settings.alerts_delivery_timeout_seconds,
    )


async def record(
    db: Database, c: Claimed, outcome: SendOutcome, *, now: datetime, settings: Settings
) -> str:
    """Complete the attempt's record and decide the delivery's next step; its new state."""
    final = c.endpoint is None or (outcome.error or "").startswith("refused:")
    async with db.write() as session:
        await session.execute(
            update(AlertDeliveryAttempt)
            .where(
                _A.delivery_id == c.delivery_id,
                _A.attempt == c.attempt,
                _A.finished_at.is_(None),
            )
            .values(
                finished_at=now,
                status_code=outcome.status_code,
                error=outcome.error,
                response_excerpt=outcome.excerpt,
            )
        )
        row = await session.get(AlertDelivery, c.delivery_id)
        # Only the claim that made this attempt may move the delivery on.
        if row is None or row.state != "pending" or row.attempts != c.attempt:
            return row.state if row is not None else "gone"
        if outcome.ok:
            row.state = "delivered"
        elif final or now >= row.give_up_at:
            row.state = "failed"
        else:
            row.next_attempt_at = now + timedelta(seconds=backoff_seconds(c.attempt, settings))
        row.updated_at = now
        return row.state


async def run_sender_once(db: Database, settings: Settings, clock: Any) -> int:
    """One run of the sender job: send every due delivery (a batch); how many were sent."""
    claimed = await claim_due(db, now=clock.now(), settings=settings)
    if not claimed:
        return 0
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(c: Claimed) -> None:
        async with gate:
            if c.endpoint is None:
                outcome = SendOutcome(None, c.problem)
            else:
                outcome = await send(c.endpoint, c.alert_id, c.document, settings)
            state = await record(db, c, outcome, now=clock.now(), settings=settings)
            if not outcome.ok:
                log.info(
                    "alert delivery %s attempt %d: %s (now %s)",
                    c.delivery_id,
                    c.attempt,
                    outcome.error,
                    state,
                )

    await asyncio.gather(*(one(c) for c in claimed))
    return len(claimed)
