"""The `dashboard-api` command: serve, migrate, tokens, seed (and the realtime/demo commands)."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Annotated

import typer

from dashboard_api.cli_guards import add_commands
from dashboard_api.settings import Settings

# Plain tracebacks (for bugs only: expected failures are one line, see main()); typer's
# pretty ones would print every frame's locals, the database URL and tokens among them.
app = typer.Typer(
    help="Dashboard API: the backend of the AI-agent dashboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
rollups_app = typer.Typer(help="Analytics rollups.", no_args_is_help=True)
app.add_typer(rollups_app, name="rollups")


def _settings() -> Settings:
    return Settings()


def _migrated_settings() -> Settings:
    """The settings, after migrating their database to head (as `serve` does).

    Every command that reads or writes the database migrates first, so that any of them
    works on a fresh install (`token create` before the first `serve`, say).
    """
    from pathlib import Path

    from dashboard_api.cli_errors import CliFailure
    from dashboard_api.db.dialect import dialect_for_url
    from dashboard_api.db.migrate import upgrade_to_head

    settings = _settings()
    path = dialect_for_url(settings.database_url).database_file(settings.database_url)
    if path and not Path(path).parent.is_dir():
        # Said up front: SQLite's own "unable to open database file" names no reason, and
        # aiosqlite then prints a stray thread traceback as the process exits.
        raise CliFailure(f"cannot create {path}: its directory does not exist")
    upgrade_to_head(settings.database_url)
    return settings


add_commands(app, _migrated_settings)  # budgets list, alerts test (cli_guards.py)


def _port_in_use(host: str, port: int) -> str | None:
    """Why (host, port) cannot be listened on, or None when it can.

    `serve` asks before it migrates, creates the admin token or seeds demo data, so that a
    port already taken fails before anything is written.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot listen on {host}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: SO_REUSEADDR, so a port in TIME_WAIT is not mistaken for taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


async def _has_tasks(settings: Settings) -> bool:
    from dashboard_api.db.engine import Database
    from dashboard_api.demo.data import has_tasks

    db = Database(settings.database_url)
    try:
        async with db.read() as session:
            return await has_tasks(session)
    finally:
        await db.dispose()


@app.command()
def migrate() -> None:
    """Migrate the database to the newest schema."""
    _migrated_settings()
    typer.echo("database is at head")


async def _ensure_admin_token(settings: Settings) -> str | None:
    """Create and return an admin token when the database holds none (a new install)."""
    from dashboard_api.db.engine import Database
    from dashboard_api.services.tokens import create_token, has_active_admin
    from dashboard_api.timeutil import SystemClock

    db = Database(settings.database_url)
    try:
        async with db.write() as session:
            if await has_active_admin(session):
                return None
            token, _ = await create_token(
                session, user_id="admin", role="admin", now=SystemClock().now()
            )
            return token
    finally:
        await db.dispose()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Processes (needs Redis when > 1)")] = 1,
    demo: Annotated[bool, typer.Option(help="Seed sample data and run simulated agents")] = False,
    demo_if_empty: Annotated[
        bool, typer.Option(help="Demo mode when the database holds no task yet (`make run`)")
    ] = False,
) -> None:
    """Migrate the database to head, then serve."""
    import os

    import uvicorn

    from dashboard_api.db.dialect import dialect_for_url

    settings = _settings()
    if workers > 1 and not settings.redis_url:
        typer.echo(
            "--workers > 1 needs DASHBOARD_REDIS_URL: without Redis, events published in one "
            "process would not reach WebSocket clients of the others.",
            err=True,
        )
        raise typer.Exit(2)
    if workers > 1 and dialect_for_url(settings.database_url).serializes_writers:
        # One process owns an embedded database: its writers queue in that process.
        typer.echo("--workers > 1 needs PostgreSQL (DASHBOARD_DATABASE_URL).", err=True)
        raise typer.Exit(2)
    busy = _port_in_use(host, port)
    if busy is not None:
        typer.echo(f"{busy} (another server? stop it, or pass --port)", err=True)
        raise typer.Exit(1)
    settings = _migrated_settings()
    if demo_if_empty and not asyncio.run(_has_tasks(settings)):
        demo = True
        typer.echo("The database holds no task yet: demo mode (sample data + simulated agents).")
    token = asyncio.run(_ensure_admin_token(settings))
    if token is not None:
        typer.echo("No admin token existed, so one was created. It is shown only this once:")
        typer.echo(f"  admin token: {token}")
        sys.stdout.flush()  # visible at once even when stdout is a pipe
    if demo:
        os.environ["DASHBOARD_DEMO"] = "true"
    from dashboard_api.observability.logging import configure_logging

    configure_logging(settings)
    from dashboard_api.realtime import uvicorn_ws_options

    uvicorn.run(
        "dashboard_api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # a worker busy with a connect storm (or a full GC over 10,000 sockets) is not dead
        timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        # realtime: server pings from the settings, frame limit, no compression
        **uvicorn_ws_options(settings),
        # Our structured logs replace uvicorn's: its access lines would carry ?token=.
        log_config=None,
        access_log=False,
    )


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="User id the token speaks for")],
    role: Annotated[str, typer.Option(help="admin | user | agent")],
) -> None:
    """Print a new token, alone, as the last line."""
    from dashboard_api.auth import ROLES

    if role not in ROLES:  # typer cannot express a Literal choice list
        typer.echo(f"role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    settings = _migrated_settings()

    async def run() -> str:
        from dashboard_api.db.engine import Database
        from dashboard_api.services.tokens import create_token
        from dashboard_api.timeutil import SystemClock

        db = Database(settings.database_url)
        try:
            async with db.write() as session:
                token, _ = await create_token(
                    session,
                    user_id=user,
                    role=role,
                    now=SystemClock().now(),
                )
                return token
        finally:
            await db.dispose()

    typer.echo(asyncio.run(run()))


@token_app.command("list")
def token_list() -> None:
    """List tokens (id, role, user, created, revoked); never the tokens themselves."""
    settings = _migrated_settings()

    async def run() -> None:
        from dashboard_api.db.engine import Database
        from dashboard_api.services.tokens import list_tokens
        from dashboard_api.timeutil import format_ts

        db = Database(settings.database_url)
        try:
            async with db.read() as session:
                for t in await list_tokens(session):
                    revoked = format_ts(t.revoked_at) if t.revoked_at else "-"
                    typer.echo(
                        f"{t.token_id}  {t.role:<5}  {t.user_id:<20}  {t.prefix}…  "
                        f"created {format_ts(t.created_at)}  revoked {revoked}"
                    )
        finally:
            await db.dispose()

    asyncio.run(run())


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token by id."""
    settings = _migrated_settings()

    async def run() -> None:
        from dashboard_api.db.engine import Database
        from dashboard_api.errors import NotFound
        from dashboard_api.services.tokens import revoke_token
        from dashboard_api.timeutil import SystemClock

        db = Database(settings.database_url)
        try:
            async with db.write() as session:
                await revoke_token(session, token_id=token_id, now=SystemClock().now())
        except NotFound as exc:
            typer.echo(exc.detail, err=True)
            raise typer.Exit(1) from None
        finally:
            await db.dispose()

    asyncio.run(run())
    typer.echo(f"revoked {token_id}")


@app.command()
def seed(
    tasks: Annotated[int, typer.Option(min=1, help="How many tasks to add")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Spread over the last N days")] = 90,
    random_seed: Annotated[int | None, typer.Option(help="Seed for repeatable data")] = None,
) -> None:
    """Add realistic sample tasks (a bulk load: binary COPY on PostgreSQL)."""
    import time

    settings = _migrated_settings()

    async def run() -> int:
        from dashboard_api.db.engine import Database
        from dashboard_api.services.pricing import PriceTable
        from dashboard_api.services.seed import seed_tasks
        from dashboard_api.timeutil import SystemClock

        # No statement timeout: a large load (and the rollup rebuild after it) takes minutes.
        db = Database(settings.database_url, command_timeout=None)
        models, default = settings.price_table()
        try:
            async with db.write() as session:
                return await seed_tasks(
                    session,
                    n=tasks,
                    now=SystemClock().now(),
                    prices=PriceTable(models, default),
                    days=days,
                    seed=random_seed,
                )
        finally:
            await db.dispose()

    start = time.perf_counter()
    count = asyncio.run(run())
    typer.echo(f"seeded {count} tasks in {time.perf_counter() - start:.1f} s")


@app.command()
def tail(
    task_id: Annotated[str, typer.Argument(help="The task to follow")],
    url: Annotated[
        str, typer.Option(envvar="DASHBOARD_URL", help="Service root URL")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(envvar="DASHBOARD_TOKEN", help="Bearer token (role user)")
    ] = None,
    since_seq: Annotated[int, typer.Option(min=0, help="Start after this seq")] = 0,
) -> None:
    """Follow a task's output live, reconnecting and resuming by itself; 0 when it ends."""
    from dashboard_api.client.tail import tail as run_tail

    if not token:
        typer.echo("a token is needed: --token or DASHBOARD_TOKEN", err=True)
        raise typer.Exit(2)
    try:
        code = asyncio.run(run_tail(url, token, task_id, since_seq=since_seq))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command("demo-agent")
def demo_agent(
    agent_type: Annotated[
        str, typer.Option(help="Agent type(s) to claim, comma-separated")
    ] = "general",
    url: Annotated[
        str, typer.Option(envvar="DASHBOARD_URL", help="Service root URL")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(envvar="DASHBOARD_TOKEN", help="Bearer token (role agent)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Agent name (default: the first agent type)")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Tasks worked at once")] = 1,
    pace: Annotated[float, typer.Option(min=0, help="Mean seconds between output lines")] = 0.4,
    lease_seconds: Annotated[
        int | None,
        typer.Option(min=10, max=86_400, help="Lease of each claimed task (default: the server's)"),
    ] = None,
) -> None:
    """A simulated agent over HTTP: heartbeats, claims tasks, streams output, honours cancels,
    and renews the lease of the task it works on (killed, its task fails by lease expiry)."""
    import httpx

    from dashboard_api.demo.simulator import HttpBackend, SimulatedAgent

    if not token:
        typer.echo("an agent token is needed: --token or DASHBOARD_TOKEN", err=True)
        raise typer.Exit(2)
    types = [t.strip() for t in agent_type.split(",") if t.strip()]
    if not types:
        typer.echo("--agent-type is empty", err=True)
        raise typer.Exit(2)

    async def run() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            agent = SimulatedAgent(
                HttpBackend(client), name=name or types[0], agent_types=types,
                workers=workers, pace=pace, lease_seconds=lease_seconds,
            )  # fmt: skip
            typer.echo(f"demo agent {agent.name} serving {', '.join(types)} at {url}")
            await agent.run()

    import contextlib

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@app.command()
def prune(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            metavar="DAYS",
            help="Delete terminal tasks created more than DAYS ago (fractions allowed)",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing")
    ] = False,
) -> None:
    """Delete old terminal tasks with their output and events now (as retention does)."""
    import math
    import time

    from dashboard_api.cli_errors import CliFailure

    if not (math.isfinite(older_than) and 0 < older_than <= 36_500):
        raise CliFailure("--older-than must be a number of days above 0 and at most 36500")
    settings = _migrated_settings()

    async def run() -> str:
        from dashboard_api.db.engine import Database
        from dashboard_api.services.retention import prune_once
        from dashboard_api.timeutil import SystemClock

        db = Database(settings.database_url)
        try:
            report = await prune_once(
                db,
                older_than=SystemClock().now() - timedelta(days=older_than),
                dry_run=dry_run,
                batch_size=settings.prune_batch_rows,
            )
        finally:
            await db.dispose()
        return report.line()

    start = time.perf_counter()
    line = asyncio.run(run())
    typer.echo(f"{line} ({time.perf_counter() - start:.1f} s)")


@rollups_app.command("rebuild")
def rollups_rebuild(
    discard_pruned: Annotated[
        bool,
        typer.Option(
            "--discard-pruned",
            help="Rebuild even though retention pruned tasks: their periods' analytics are lost",
        ),
    ] = False,
) -> None:
    """Recompute the analytics rollups from the raw tasks (task writes wait meanwhile)."""
    import time

    from dashboard_api.cli_errors import CliFailure

    settings = _migrated_settings()

    async def run() -> None:
        from dashboard_api.db.engine import Database
        from dashboard_api.services.analytics.rebuild import rebuild_rollups
        from dashboard_api.services.retention import pruned_before
        from dashboard_api.timeutil import format_ts

        db = Database(settings.database_url, command_timeout=None)  # minutes on 1M tasks
        try:
            async with db.write() as session:
                pruned = await pruned_before(session)
                if pruned is not None and not discard_pruned:
                    raise CliFailure(
                        f"tasks created before {format_ts(pruned)} were pruned and the rollups "
                        "still hold their analytics, which a rebuild from the tasks would drop; "
                        "pass --discard-pruned to rebuild anyway"
                    )
                await rebuild_rollups(session)
        finally:
            await db.dispose()

    start = time.perf_counter()
    asyncio.run(run())
    typer.echo(f"rebuilt analytics rollups in {time.perf_counter() - start:.1f} s")


def main() -> None:
    """Console-script entry point: an expected failure is one line on stderr, exit 1."""
    from dashboard_api.cli_errors import expected_error_line

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        line = expected_error_line(exc)
        if line is None:
            raise
        typer.echo(f"dashboard-api: {line}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
    sys.exit(0)
