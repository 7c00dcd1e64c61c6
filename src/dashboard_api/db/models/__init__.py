"""Every table, imported here so that `Base.metadata` is complete for migrations and tests."""

from dashboard_api.db.models.agents import Agent
from dashboard_api.db.models.analytics import (
    AnalyticsHistogram,
    AnalyticsPending,
    AnalyticsRollup,
    AnalyticsState,
)
from dashboard_api.db.models.conversations import (
    Conversation,
    ConversationMessage,
    ConversationTask,
)
from dashboard_api.db.models.guards import (
    Alert,
    AlertChannel,
    AlertDelivery,
    AlertDeliveryAttempt,
    AlertRule,
    Budget,
)
from dashboard_api.db.models.ingress import IngressMessage
from dashboard_api.db.models.oauth import OAuthInstallation
from dashboard_api.db.models.otlp import OtlpSpan
from dashboard_api.db.models.sources import DataSource, IndexJob
from dashboard_api.db.models.tasks import Task, TaskEvent, TaskOutputChunk
from dashboard_api.db.models.tokens import ApiToken
from dashboard_api.db.models.webhooks import WebhookConfig, WebhookEvent

__all__ = [
    "Agent",
    "Alert",
    "AlertChannel",
    "AlertDelivery",
    "AlertDeliveryAttempt",
    "AlertRule",
    "AnalyticsHistogram",
    "AnalyticsPending",
    "AnalyticsRollup",
    "AnalyticsState",
    "ApiToken",
    "Budget",
    "Conversation",
    "ConversationMessage",
    "ConversationTask",
    "DataSource",
    "IndexJob",
    "IngressMessage",
    "OAuthInstallation",
    "OtlpSpan",
    "Task",
    "TaskEvent",
    "TaskOutputChunk",
    "WebhookConfig",
    "WebhookEvent",
]
