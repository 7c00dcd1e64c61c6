"""`dashboard-api budgets …` and `dashboard-api alerts …` (docs/api.md §14, §15)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated

import typer

from dashboard_api.settings import Settings

budgets_app = typer.Typer(help="Spending budgets.", no_args_is_help=True)
alerts_app = typer.Typer(help="Alert rules and notification channels.", no_args_is_help=True)


# How the commands get their (migrated) settings: handed in by `add_commands`.
_settings_source: list[Callable[[], Settings]] = []


def add_commands(app: typer.Typer, migrated_settings: Callable[[], Settings]) -> None:
    """Add `budgets` and `alerts` to the main command."""
    _settings_source[:] = [migrated_settings]
    app.add_typer(budgets_app, name="budgets")
    app.add_typer(alerts_app, name="alerts")


def _settings() -> Settings:
    return _settings_source[0]()


@budgets_app.command("list")
def budgets_list() -> None:
    """Every budget with its spend and state in its current period."""
    settings = _settings()

    async def run() -> None:
        from dashboard_api.db.engine import Database
        from dashboard_api.services.budgets.service import list_budgets
        from dashboard_api.timeutil import SystemClock

        db = Database(settings.database_url)
        try:
            async with db.read() as session:
                budgets = await list_budgets(session, now=SystemClock().now())
        finally:
            await db.dispose()
        if not budgets:
            typer.echo("no budgets")
        for b in budgets:
            scope = ",".join(f"{k}={v}" for k, v in b["scope"].items()) or "fleet"
            held = "  HELD" if b["held"] else ""
            typer.echo(
                f"{b['budget_id']}  {b['state']:<8}  ${b['spent_usd']:,.6f} of "
                f"${b['limit_usd']:,.2f}  {b['period']} ({b['tz']}) from {b['period_start']}  "
                f"{scope}  {b['action']}{held}"
            )

    asyncio.run(run())


@alerts_app.command("test")
def alerts_test(
    channel: Annotated[str, typer.Argument(help="The channel id to notify")],
) -> None:
    """Send a test notification to a channel now and print the outcome (exit 1 when it
    failed). Nothing is recorded."""
    settings = _settings()

    async def run() -> bool:
        from dashboard_api.db.engine import Database
        from dashboard_api.ids import new_id
        from dashboard_api.services.alerts.channels import get_endpoint
        from dashboard_api.services.alerts.outbox import send
        from dashboard_api.services.secrets_box import box_key
        from dashboard_api.timeutil import SystemClock, format_ts

        db = Database(settings.database_url)
        try:
            async with db.read() as session:
                endpoint = await get_endpoint(session, channel, box_key(settings))
        finally:
            await db.dispose()
        now = format_ts(SystemClock().now())
        document = {
            "alert_id": f"test-{new_id()}",
            "rule_id": "test",
            "rule_name": "Test notification",
            "kind": "test",
            "state": "firing",
            "value": 0.0,
            "threshold": 0.0,
            "summary": "A test notification from dashboard-api: this channel works.",
            "started_at": now,
            "resolved_at": None,
        }
        started = time.perf_counter()
        outcome = await send(endpoint, str(document["alert_id"]), document, settings)
        ms = (time.perf_counter() - started) * 1000
        if outcome.ok:
            typer.echo(f"delivered to {channel}: HTTP {outcome.status_code} in {ms:.0f} ms")
        else:
            typer.echo(f"not delivered to {channel}: {outcome.error} (after {ms:.0f} ms)", err=True)
        return outcome.ok

    from dashboard_api.errors import NotFound
    from dashboard_api.services.alerts.channels import ChannelUnreadable

    try:
        ok = asyncio.run(run())
    except (NotFound, ChannelUnreadable) as exc:
        typer.echo(getattr(exc, "detail", None) or str(exc), err=True)
        raise typer.Exit(1) from None
    if not ok:
        raise typer.Exit(1)
