"""`/api/alerts`: notification channels, alert rules, alerts and deliveries (docs/api.md §15)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from dashboard_api.api.deps import AdminRole, CtxDep, PageDep, UserRole, split_multi
from dashboard_api.db.models.guards import ALERT_STATES
from dashboard_api.errors import Unprocessable
from dashboard_api.schemas.alerts import (
    AlertOut,
    ChannelIn,
    ChannelOut,
    DeliveryAttemptOut,
    RuleIn,
    RuleOut,
)
from dashboard_api.schemas.common import Items, Page, problem_responses
from dashboard_api.services.alerts import channels, history, rules
from dashboard_api.services.alerts.urls import UrlRefused, check_url
from dashboard_api.services.secrets_box import box_key

router = APIRouter(prefix="/api/alerts", tags=["alerts"], responses=problem_responses(401, 403))
IdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:@-]{1,255}$")]


@router.put("/channels/{channel_id}", response_model=ChannelOut, responses=problem_responses(422))
async def put_channel(ctx: CtxDep, _: AdminRole, channel_id: IdPath, body: ChannelIn) -> ChannelOut:
    """Create or replace a channel (admin). A URL whose host resolves to a loopback,
    link-local, private or reserved address is 422 unless
    DASHBOARD_ALERTS_ALLOW_PRIVATE_URLS=true. The secret is never returned."""
    settings = ctx.settings
    try:
        async with asyncio.timeout(settings.alerts_delivery_timeout_seconds):
            target = await check_url(body.url, allow_private=settings.alerts_allow_private_urls)
    except UrlRefused as exc:
        raise Unprocessable(f"The URL is refused: {exc}.", loc=["body", "url"]) from None
    except TimeoutError:
        raise Unprocessable(
            "The URL is refused: its host did not resolve in time.", loc=["body", "url"]
        ) from None
    async with ctx.db.write() as session:
        doc = await channels.put_channel(
            session,
            channel_id=channel_id,
            body=body,
            target=target,
            key=box_key(ctx.settings),
            now=ctx.clock.now(),
        )
    return ChannelOut.model_validate(doc)


@router.delete("/channels/{channel_id}", status_code=204, responses=problem_responses(404, 409))
async def delete_channel(ctx: CtxDep, _: AdminRole, channel_id: IdPath) -> Response:
    """Delete a channel (admin); 409 while a rule lists it. Deliveries already recorded
    stay, with their attempts; one still pending fails at the sender's next run, its
    attempt recorded as "the channel no longer exists"."""
    async with ctx.db.write() as session:
        await channels.delete_channel(session, channel_id=channel_id)
    return Response(status_code=204)


@router.get("/channels", response_model=Items[ChannelOut])
async def list_channels(ctx: CtxDep, _: AdminRole) -> Items[ChannelOut]:
    async with ctx.db.read() as session:
        items = await channels.list_channels(session)
    return Items[ChannelOut].model_validate({"items": items})


@router.put("/rules/{rule_id}", response_model=RuleOut, responses=problem_responses(422))
async def put_rule(ctx: CtxDep, _: AdminRole, rule_id: IdPath, body: RuleIn) -> RuleOut:
    """Create or replace a rule (admin); its channels must exist."""
    async with ctx.db.write() as session:
        doc = await rules.put_rule(session, rule_id=rule_id, body=body, now=ctx.clock.now())
    return RuleOut.model_validate(doc)


@router.delete("/rules/{rule_id}", status_code=204, responses=problem_responses(404))
async def delete_rule(ctx: CtxDep, _: AdminRole, rule_id: IdPath) -> Response:
    """Delete a rule (admin). Its open alert resolves ("the rule was deleted") and
    notifies its channels once; its alerts and their deliveries stay as history."""
    async with ctx.db.write() as session:
        await rules.delete_rule(
            session, rule_id=rule_id, now=ctx.clock.now(), settings=ctx.settings
        )
    return Response(status_code=204)


@router.get("/rules", response_model=Items[RuleOut])
async def list_rules(ctx: CtxDep, _: UserRole) -> Items[RuleOut]:
    async with ctx.db.read() as session:
        items = await rules.list_rules(session)
    return Items[RuleOut].model_validate({"items": items})


@router.get("", response_model=Page[AlertOut], responses=problem_responses(422))
async def list_alerts(
    ctx: CtxDep,
    _: UserRole,
    page: PageDep,
    state: Annotated[
        list[str] | None, Query(description="`firing`, `resolved`; repeatable")
    ] = None,
) -> Page[AlertOut]:
    """Alerts, newest first."""
    states = split_multi(state, name="state", allowed=ALERT_STATES)
    async with ctx.db.read() as session:
        result = await history.list_alerts(session, states=states, page=page)
    return Page[AlertOut].model_validate(
        {
            "items": result.items,
            "total": result.total,
            "page": result.page,
            "per_page": result.per_page,
            "pages": result.pages,
            "next_cursor": result.next_cursor,
        }
    )


@router.get(
    "/{alert_id}/deliveries",
    response_model=Items[DeliveryAttemptOut],
    responses=problem_responses(404),
)
async def list_deliveries(ctx: CtxDep, _: AdminRole, alert_id: IdPath) -> Items[DeliveryAttemptOut]:
    """Every attempt to notify the alert's channels (admin), oldest first."""
    async with ctx.db.read() as session:
        items = await history.list_attempts(session, alert_id=alert_id)
    return Items[DeliveryAttemptOut].model_validate({"items": items})
