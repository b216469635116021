"""SQL store (SQLAlchemy 2 typed ORM, Alembic migrations) on SQLite or PostgreSQL."""

from cl_assets.core.store.models import Adapter, Deployment, FeedbackEvent, Interaction, LearningEvent, Message, Snapshot
from cl_assets.core.store.store import FEEDBACK_KINDS, Store, UnknownInteractionError

__all__ = [
    "FEEDBACK_KINDS",
    "Adapter",
    "Deployment",
    "FeedbackEvent",
    "Interaction",
    "LearningEvent",
    "Message",
    "Snapshot",
    "Store",
    "UnknownInteractionError",
]
