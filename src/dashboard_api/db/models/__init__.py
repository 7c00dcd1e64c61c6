"""Every table, imported here so that `Base.metadata` is complete for migrations and tests."""

from dashboard_api.db.models.tasks import Task, TaskEvent, TaskOutputChunk
from dashboard_api.db.models.tokens import ApiToken

__all__ = ["ApiToken", "Task", "TaskEvent", "TaskOutputChunk"]
