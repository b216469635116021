"""SQLAlchemy 2 typed tables: the record of everything CL knows.

Only sanitized text is ever stored. Feedback events and deployments are append-only; the
latest feedback value is mirrored onto its interaction so curation reads one table.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON, list: JSON}


class Interaction(Base):
    """One chat turn: a sanitized prompt and the answer it got."""

    __tablename__ = "interactions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ingested_at: Mapped[datetime] = mapped_column(default=utcnow)
    session_id: Mapped[str | None] = mapped_column(String(128))
    user_hash: Mapped[str | None] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    pii_types: Mapped[list] = mapped_column(default=list)
    source: Mapped[str] = mapped_column(String(32), default="chat")
    model_version: Mapped[str | None] = mapped_column(String(128))
    adapter_version: Mapped[str | None] = mapped_column(String(64))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    # Latest explicit 👍/👎 (None: unrated) and whether the answer was regenerated (implicit 👎).
    helpful: Mapped[bool | None] = mapped_column(Boolean)
    regenerated: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback_at: Mapped[datetime | None] = mapped_column()
    # The message right before the answer (the user's prompt, at the end of its chain of
    # parents back to the system prompt); None for a single-turn row without stored context.
    # No foreign key: adding one would make SQLite copy the whole table in the migration;
    # the store writes both in one transaction and erasure deletes both.
    context_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index("ix_interactions_created_at", "created_at"),
        Index("ix_interactions_user_hash", "user_hash"),
        Index("ix_interactions_adapter_feedback", "adapter_version", "feedback_at"),
        Index("ix_interactions_context_id", "context_id"),
    )


class Message(Base):
    """One sanitized message of a conversation, stored once and linked to the one before it.

    The id is a content hash of (parent id, user hash, role, content): a prefix that two turns
    share is one chain of rows, a retry is a sibling branch, and each user's messages form
    their own trees, so erasing a user deletes whole trees and never a message another user's
    context needs.
    """

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))  # system | user | assistant
    content: Mapped[str] = mapped_column(Text)
    pii_types: Mapped[list] = mapped_column(default=list)
    user_hash: Mapped[str | None] = mapped_column(String(64))
    # OpenAI fine-tuning's per-message weight (0: do not train on it); None: not given.
    weight: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_messages_parent_id", "parent_id"),
        Index("ix_messages_user_hash", "user_hash"),
    )


class FeedbackEvent(Base):
    """Append-only history of every rating, explicit or implicit."""

    __tablename__ = "feedback_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id", ondelete="CASCADE"))
    helpful: Mapped[bool | None] = mapped_column(Boolean)
    kind: Mapped[str] = mapped_column(String(16), default="explicit")  # explicit | regenerate
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_feedback_events_created_at", "created_at"),
        Index("ix_feedback_events_interaction", "interaction_id"),
    )


class Snapshot(Base):
    """A curated ChatML dataset file; immutable once written, identified by its timestamp id."""

    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # YYYYMMDD_HHMMSS
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    n_rows: Mapped[int] = mapped_column(Integer)
    counts: Mapped[dict] = mapped_column(default=dict)
    user_hashes: Mapped[list] = mapped_column(default=list)  # for erasure: which users it holds
    feedback_watermark: Mapped[int] = mapped_column(Integer, default=0)  # last feedback_events.id seen
    note: Mapped[str | None] = mapped_column(Text)
    tainted: Mapped[bool] = mapped_column(Boolean, default=False)


class Adapter(Base):
    """A LoRA adapter trained on one snapshot (same id), with its evaluation and gate verdict."""

    __tablename__ = "adapters"

    id: Mapped[str] = mapped_column(ForeignKey("snapshots.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    path: Mapped[str] = mapped_column(Text)
    files_sha256: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(32))
    train_metrics: Mapped[dict] = mapped_column(default=dict)
    eval_report: Mapped[dict | None] = mapped_column()
    accuracy: Mapped[float | None] = mapped_column(Float)
    general_accuracy: Mapped[float | None] = mapped_column(Float)
    gate_passed: Mapped[bool | None] = mapped_column(Boolean)
    gate_reason: Mapped[str | None] = mapped_column(Text)
    tainted: Mapped[bool] = mapped_column(Boolean, default=False)


class Deployment(Base):
    """Append-only: the latest row names the serving adapter (None: the base model)."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    adapter_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), default="cl")
    reason: Mapped[str] = mapped_column(Text, default="")
    forced: Mapped[bool] = mapped_column(Boolean, default=False)


class LearningEvent(Base):
    """What happened in the loop, for people and for `logs/learning_events.jsonl`."""

    __tablename__ = "learning_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(default=dict)


class Meta(Base):
    """Key/value facts about the store itself, e.g. the salt fingerprint."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
