"""Redis ingress: the ids of producer messages already stored (exactly-once across replicas)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base


class IngressMessage(Base):
    """One stored producer message that carried a `message_id`.

    Inserted in the same transaction as the output or status change it carries, so that
    a message stored by one replica is seen as stored by every other one, whatever the
    moment either of them dies. Rows older than a day are pruned by the ingress leader.
    """

    __tablename__ = "ingress_messages"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    stored_at: Mapped[datetime]

    __table_args__ = (Index("ix_ingress_messages_stored_at", "stored_at"),)
