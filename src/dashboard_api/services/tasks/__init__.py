"""Tasks: registration, the status state machine, output, claims, cancellation, queries.

One module per concern:

- `filters`   the filters and orders of task lists
- `summaries` a task summary's columns, and who writes its document (Python or the database)
- `listing`   a page of task summaries and its exact total
- `counts`    exact counts (and the row at an offset) through the analytics rollups
- `search`    `q` totals from per-hour match counts cached per process
- `reads`     one task, its status history, its output chunks
- `lifecycle` register, update, claim, cancel (the status state machine)
- `output`    output appends
- `recorded`  tasks recorded after they ended (many at once)
- `leases`    task heartbeats, the lease reaper's move, retries

The names callers use are re-exported here.
"""

from __future__ import annotations

from dashboard_api.services.tasks.counts import count_expression, locate_by_rollups, rollup_seek
from dashboard_api.services.tasks.filters import ORDERINGS, TaskFilters
from dashboard_api.services.tasks.leases import (
    Expired,
    expire_tasks,
    heartbeat_task,
    renew_agent_leases,
    retry_task,
)
from dashboard_api.services.tasks.lifecycle import (
    ALLOWED_MOVES,
    cancel_task,
    claim_task,
    register_task,
    update_task,
)
from dashboard_api.services.tasks.listing import FEW_MATCHES, count_tasks, list_tasks
from dashboard_api.services.tasks.output import (
    AppendResult,
    append_output,
    append_output_alone,
    store_output,
    worth_trying_alone,
)
from dashboard_api.services.tasks.reads import (
    AnyRow,
    chunk_rows,
    get_task,
    get_task_row,
    list_chunks,
    list_status_events,
    public_doc_of_row,
    status_event_rows,
)
from dashboard_api.services.tasks.recorded import (
    FinishedTask,
    record_finished_tasks,
    update_recorded_tasks,
)
from dashboard_api.services.tasks.summaries import SUMMARY_FIELDS, summary_columns

__all__ = [
    "ALLOWED_MOVES",
    "FEW_MATCHES",
    "ORDERINGS",
    "SUMMARY_FIELDS",
    "AnyRow",
    "AppendResult",
    "Expired",
    "FinishedTask",
    "TaskFilters",
    "append_output",
    "append_output_alone",
    "cancel_task",
    "chunk_rows",
    "claim_task",
    "count_expression",
    "count_tasks",
    "expire_tasks",
    "get_task",
    "get_task_row",
    "heartbeat_task",
    "list_chunks",
    "list_status_events",
    "list_tasks",
    "locate_by_rollups",
    "public_doc_of_row",
    "record_finished_tasks",
    "register_task",
    "renew_agent_leases",
    "retry_task",
    "rollup_seek",
    "status_event_rows",
    "store_output",
    "summary_columns",
    "update_recorded_tasks",
    "update_task",
    "worth_trying_alone",
]
