"""Service configuration: environment variables with the DASHBOARD_ prefix, or a .env file."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ModelPrice(BaseModel):
    """USD per million tokens of each kind."""

    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    cache_read: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)


def _default_prices() -> dict[str, ModelPrice]:
    return {
        "claude-opus-4": ModelPrice(input=15, output=75, cache_read="1.5", cache_write="18.75"),
        "claude-sonnet-4": ModelPrice(input=3, output=15, cache_read="0.3", cache_write="3.75"),
        "claude-haiku-4": ModelPrice(input=1, output=5, cache_read="0.1", cache_write="1.25"),
        "gpt-5": ModelPrice(input="1.25", output=10, cache_read="0.125", cache_write=0),
        "gpt-5-mini": ModelPrice(input="0.25", output=2, cache_read="0.025", cache_write=0),
    }


class Settings(BaseSettings):
    """Every knob of the service. Built once per app; nothing reads the environment at import."""

    model_config = SettingsConfigDict(
        env_prefix="DASHBOARD_", env_file=".env", extra="ignore", validate_default=True
    )

    # --- storage and broker -------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./dashboard.db"
    redis_url: str | None = None
    # Prefix of every Redis key and channel, so that several deployments (or test runs)
    # can share one Redis server.
    redis_prefix: str = "dashboard:"
    # Prefix of the producer channels of the Redis ingress (docs/api.md §11 names them without
    # one: `task:{id}:output`); set it when several deployments share one Redis server.
    redis_ingress_prefix: str = Field("", max_length=100)
    # Redis ingress leader lease; a replica holds 3 leases of messages (ingress/consumer.py).
    ingress_lease_ms: int = Field(3000, ge=300, le=60_000)
    database_pool_size: int = Field(10, ge=1, le=200)
    # SQLite: each pooled connection's page cache and memory-mapped span of the file, in
    # MiB (docs/configuration.md; db/dialect/sqlite_connection.py, DEFAULT_MMAP_MB).
    sqlite_cache_mb: int = Field(32, ge=1, le=65_536)
    sqlite_mmap_mb: int = Field(2048, ge=0, le=1_048_576)
    dependency_timeout_seconds: float = Field(2.0, gt=0, le=60)

    # --- HTTP ---------------------------------------------------------------------------
    cors_origins: Annotated[list[str], NoDecode] = []
    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON when stderr is not a terminal
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    metrics_require_token: bool = False
    metrics_cache_seconds: float = Field(5.0, ge=0)  # task counts on /metrics are this fresh
    # Requests per token per minute; 0 disables. None: off in the embedded mode, 12,000
    # (200/s) when Redis is configured, where every replica shares the count.
    rate_limit_per_minute: int | None = Field(None, ge=0)
    token_cache_seconds: float = Field(5.0, ge=0)

    # --- tasks --------------------------------------------------------------------------
    output_cap_bytes: int = Field(16 * 1024 * 1024, ge=1)
    max_chunk_bytes: int = Field(1024 * 1024, ge=1)
    max_chunks_per_request: int = Field(1000, ge=1)
    default_agent_type: str = "general"
    # Leases (docs/api.md §13): a running task or index job fails when its producer has not
    # been heard of for this long (claim or register may ask for another length).
    task_lease_seconds: int = Field(300, ge=10, le=86_400)
    # How often the `lease-reaper` job fails expired tasks and jobs (one replica does).
    lease_reap_interval_seconds: float = Field(5.0, ge=0, le=10)
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)
    default_price: ModelPrice = ModelPrice(input=3, output=15, cache_read="0.3", cache_write="3.75")
    prices_file: Path | None = None
    # Rows per keyset batch of `GET /api/tasks/export` (services/task_export.py).
    export_batch_rows: int = Field(2000, ge=1, le=100_000)

    # --- retention (docs/retention.md) --------------------------------------------------
    # Terminal tasks created more than this many days ago are deleted with their output
    # and events (unset: everything is kept); one replica at a time prunes every
    # `prune_interval_seconds`, `prune_batch_rows` tasks per transaction.
    retention_days: float | None = Field(None, gt=0)
    prune_interval_seconds: float = Field(900.0, ge=1, le=3600)
    prune_batch_rows: int = Field(1000, ge=1, le=100_000)

    # --- analytics ----------------------------------------------------------------------
    analytics_max_buckets: int = Field(2000, ge=1, le=100_000)
    # Only for benchmarks that measure what rollup upkeep costs a task write: with False,
    # task writes leave the rollups alone and analytics disagree with the tasks until
    # `dashboard-api rollups rebuild`.
    analytics_rollups_enabled: bool = True
    # How often each replica folds the contributions task writes left in
    # `analytics_pending` into the rollups (0: only when an analytics read asks first).
    analytics_fold_interval_seconds: float = Field(0.25, ge=0)

    # --- agents -------------------------------------------------------------------------
    agent_online_seconds: float = Field(60.0, gt=0)
    # How often each replica looks for agents whose heartbeat expired, to announce them
    # offline on the `agents` channel (0: never; reads still show them offline).
    agent_sweep_interval_seconds: float = Field(5.0, ge=0)

    # --- realtime -----------------------------------------------------------------------
    ws_ping_interval_seconds: float = Field(20.0, gt=0)
    ws_ping_timeout_seconds: float = Field(20.0, gt=0)
    ws_send_queue_size: int = Field(1000, ge=1)
    ws_write_interval_ms: float = Field(10.0, ge=0, le=1000)  # see realtime/hub.py
    ws_max_subscriptions: int = Field(100, ge=1)
    ws_max_message_bytes: int = Field(64 * 1024, ge=1)
    ws_max_connections_per_token: int = Field(0, ge=0)  # 0: unlimited
    # `serve --workers N`: uvicorn's supervisor restarts a worker that does not answer its
    # health check within this long (uvicorn's own default, 5 s, was missed by a worker
    # holding thousands of sockets during a connect storm, and all its sockets went with it).
    worker_healthcheck_seconds: int = Field(60, ge=1)

    # --- integrations -------------------------------------------------------------------
    webhook_create_tasks: bool = True
    # Key that seals webhook secrets in the database (HMAC-SHA256 keystream + tag). Unset:
    # a built-in key, which keeps secrets out of logs and dumps but is not encryption.
    webhook_secrets_key: SecretStr | None = None
    webhook_max_body_bytes: int = Field(1024 * 1024, ge=1)
    slack_timestamp_tolerance_seconds: int = Field(300, ge=1)
    oauth_expiring_soon_days: float = Field(7.0, ge=0)
    github_client_id: str | None = None
    github_client_secret: str | None = None
    jira_client_id: str | None = None
    jira_client_secret: str | None = None
    slack_client_id: str | None = None
    slack_client_secret: str | None = None
    github_required_scopes: Annotated[list[str], NoDecode] = ["repo", "read:org"]
    jira_required_scopes: Annotated[list[str], NoDecode] = ["read:jira-work", "write:jira-work"]
    slack_required_scopes: Annotated[list[str], NoDecode] = ["app_mentions:read", "chat:write"]

    # --- OpenTelemetry ingestion (POST /v1/traces, otlp/) ------------------------------
    # Request body, before and after gzip (OTLP/HTTP recommends 20 MiB); over it: 413.
    otlp_max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    otlp_max_spans_per_request: int = Field(10_000, ge=1)
    # Attribute and event string values are cut to this many characters when stored, and
    # at most this many events of a span are kept.
    otlp_max_attribute_chars: int = Field(64 * 1024, ge=64, le=1024 * 1024)
    otlp_max_events_per_span: int = Field(128, ge=0, le=10_000)
    # Spans kept to assemble invocations that arrive in pieces: a span whose parent has
    # not come within this time, or that comes this long after its invocation's root,
    # is no longer joined to it.
    otlp_span_retention_seconds: float = Field(3600.0, gt=0)
    # How often one replica deletes the spans past that retention (0: never).
    otlp_prune_interval_seconds: float = Field(60.0, ge=0)

    # --- budgets and alerts (docs/api.md §14, §15) ----------------------------------------------
    # How often one replica recomputes budgets' spend and announces state changes (a hold
    # itself is set by the task write that reaches the limit, not by this).
    budgets_evaluate_interval_seconds: float = Field(1.0, ge=0, le=2)
    # How often one replica evaluates the alert rules (0: never).
    alerts_evaluate_interval_seconds: float = Field(15.0, ge=0, le=15)
    # How often one replica looks for due notification deliveries (0: never).
    alerts_sender_interval_seconds: float = Field(1.0, ge=0, le=60)
    # Channel URLs resolving to loopback, link-local, private or reserved addresses are
    # refused unless this is true (tests; receivers on a private network).
    alerts_allow_private_urls: bool = False
    alerts_delivery_timeout_seconds: float = Field(5.0, gt=0, le=30)
    # Backoff of a failed delivery: the first retry within this (jittered down to half),
    # then doubling, each wait at most `..._max_seconds`; retries stop once a delivery is
    # `..._retry_for_seconds` old.
    alerts_retry_first_seconds: float = Field(8.0, gt=0, le=10)
    alerts_retry_max_seconds: float = Field(300.0, gt=0, le=300)
    alerts_retry_for_seconds: float = Field(900.0, gt=0)

    # --- demo ---------------------------------------------------------------------------
    demo: bool = False
    # Sample tasks seeded (over the last `demo_days`) when a demo starts on a database
    # without tasks; simulated agents per agent type; seconds between output lines.
    demo_tasks: int = Field(3000, ge=0)
    demo_days: int = Field(30, ge=1)
    demo_agents: int = Field(2, ge=0)
    demo_pace_seconds: float = Field(0.4, ge=0)

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        # Checked here, so that a typo is one clear line rather than a driver's traceback.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            driver = make_url(value).drivername
        except ArgumentError:
            driver = ""
        if driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError(
                "must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST:PORT/NAME"
            )
        return value

    @field_validator(
        "cors_origins",
        "github_required_scopes",
        "jira_required_scopes",
        "slack_required_scopes",
        mode="before",
    )
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @property
    def effective_rate_limit(self) -> int:
        if self.rate_limit_per_minute is not None:
            return self.rate_limit_per_minute
        return 12_000 if self.redis_url else 0

    @property
    def backend(self) -> Literal["postgresql", "sqlite"]:
        return "sqlite" if self.database_url.startswith("sqlite") else "postgresql"

    def price_table(self) -> tuple[dict[str, ModelPrice], ModelPrice]:
        """The effective price table: the JSON file (when set) overrides the inline one."""
        if self.prices_file is None:
            return self.prices, self.default_price
        import json

        raw = json.loads(self.prices_file.read_text())
        models = {name: ModelPrice.model_validate(p) for name, p in raw.get("models", {}).items()}
        default = (
            ModelPrice.model_validate(raw["default"]) if "default" in raw else self.default_price
        )
        return models, default
