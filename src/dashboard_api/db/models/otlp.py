"""OpenTelemetry ingestion: the spans kept while their invocations are assembled."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base


class OtlpSpan(Base):
    """One span received on `POST /v1/traces` (otlp/), stored once whatever the retries
    and replicas: its key is the span's own (trace id, span id).

    Spans of one invocation come in any order and number of requests; each is kept (as
    `facts`: the JSON of `otlp.spans.SpanFacts`) so that the invocation's task can be
    planned from all of them, and so that a span sent again is known. `task_id` is set
    on an invocation's root once its task exists. Rows older than the retention setting
    are pruned.
    """

    __tablename__ = "otlp_spans"

    trace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    span_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    task_id: Mapped[str | None] = mapped_column(String(255))
    # The request that stored it (a random id per request; for inspection).
    batch: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime]
    facts: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_otlp_spans_received_at", "received_at"),)
