"""The SQL store: the only code that talks to the database.

Every write runs in one transaction; inserts are idempotent on the interaction id, so a
re-import or a retried request never duplicates a row.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, bindparam, case, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from cl_assets.core.store.engine import WRITE_OPTION, make_engine, upgrade
from cl_assets.core.store.models import (
    Adapter,
    Deployment,
    FeedbackEvent,
    Interaction,
    LearningEvent,
    Message,
    Meta,
    Snapshot,
    utcnow,
)
from cl_assets.settings import Settings

FEEDBACK_KINDS = ("explicit", "regenerate")


class ErasedRows(NamedTuple):
    interactions: int
    feedback_events: int
    messages: int = 0

_INSERT_CHUNK = 1_000

_INTERACTIONS = Interaction.__table__
_INTERACTION_COLUMNS = frozenset(_INTERACTIONS.columns.keys())
_SELECT_IDS = select(_INTERACTIONS.c.id).where(_INTERACTIONS.c.id.in_(bindparam("ids", expanding=True)))
_INSERT_FEEDBACK = insert(FeedbackEvent.__table__)
_MESSAGES = Message.__table__
MESSAGE_COLUMNS = ("id", "parent_id", "role", "content", "pii_types", "user_hash", "weight")
# Every row gets a value for every column, so one executemany statement covers a batch; a
# NOT NULL column left out or given None gets its model default, as the ORM would give it.
_EMPTY_ROW: dict[str, Any] = dict.fromkeys(_INTERACTIONS.columns.keys())
_NOT_NULL_DEFAULTS: dict[str, Callable[[datetime], Any]] = {
    "created_at": lambda now: now,
    "ingested_at": lambda now: now,
    "pii_types": lambda now: [],
    "source": lambda now: "chat",
    "regenerated": lambda now: False,
}


def _interaction_values(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`row` with every column of `interactions` present (and nothing else)."""
    values = {**_EMPTY_ROW, **row}
    if len(values) != len(_EMPTY_ROW):
        raise ValueError(f"not columns of interactions: {sorted(set(values) - _INTERACTION_COLUMNS)}")
    for name, default in _NOT_NULL_DEFAULTS.items():
        if values[name] is None:
            values[name] = default(now)
    return values


class _DriverInsert:
    """An INSERT compiled once, run as the driver's own executemany of positional tuples.

    Values go through SQLAlchemy's bind processors for their column types, so they are
    stored exactly as a Core insert would store them; what is skipped is SQLAlchemy's
    per-row parameter handling, which costs more than SQLite's insert itself. For SQLite,
    whose driver runs an executemany in C."""

    def __init__(self, stmt: Any, dialect: Any, columns: Iterable[str]) -> None:
        columns = list(columns)
        compiled = stmt.compile(dialect=dialect, column_keys=columns)
        assert compiled.positional and sorted(compiled.positiontup or ()) == sorted(columns)
        order = list(compiled.positiontup or ())
        self.sql = str(compiled)
        self._values = operator.itemgetter(*order)
        self._convert = [
            (i, proc)
            for i, name in enumerate(order)
            if (proc := stmt.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]

    def execute(self, session: Session, rows: list[dict[str, Any]]) -> None:
        params = []
        # The same object converts to the same value: a batch shares its `ingested_at`,
        # a row its `created_at` and `feedback_at`, all rows True/False/None. Keyed by
        # id(), which is safe while `rows` keeps every value alive.
        done: list[dict[int, Any]] = [{} for _ in self._convert]
        convert = list(zip(self._convert, done, strict=True))
        for row in rows:
            values = list(self._values(row))
            for (i, proc), seen in convert:
                value = values[i]
                key = id(value)
                if key in seen:
                    values[i] = seen[key]
                else:
                    values[i] = seen[key] = proc(value)
            params.append(tuple(values))
        session.connection().exec_driver_sql(self.sql, params)


class UnknownInteractionError(KeyError):
    """Feedback names an interaction the store does not have."""

    def __str__(self) -> str:
        return f"no interaction with id {self.args[0]!r}"


class Store:
    """Typed access to CL's tables on SQLite or PostgreSQL; migrates itself on open."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        if migrate:
            upgrade(self.engine)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        return cls(settings.db_url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction; committed on success, rolled back on any error."""
        with self._writer.begin() as session:
            yield session

    # -- interactions -------------------------------------------------------------------

    def insert_interactions(
        self, rows: Sequence[dict[str, Any]], messages: Sequence[dict[str, Any]] = ()
    ) -> list[str]:
        """Insert the rows whose id is new, and a feedback event for each one with a rating,
        in one transaction; returns the ids actually inserted (re-imports add none).

        `messages` (each with every key of `MESSAGE_COLUMNS`, parents before children) are the
        conversation contexts the rows' `context_id` point into; they go first, in the same
        transaction, and one whose id is stored already is skipped: a shared prefix is stored once.

        A handful of statements per 1,000 rows, not one per row: one `IN` query for the ids
        already stored, then one executemany each for the new interactions and their ratings.
        On SQLite the transaction holds the write lock from `BEGIN IMMEDIATE` on, so what
        that query saw is exactly what the insert finds. On PostgreSQL another writer may
        insert the same ids in between: there `ON CONFLICT DO NOTHING RETURNING id` names
        the rows this transaction really inserted, so each rating is recorded exactly once.
        """
        inserted: list[str] = []
        if not rows:
            return inserted
        now = utcnow()
        postgres = self.dialect == "postgresql"
        with self.write() as s:
            self._insert_messages(s, messages, postgres)
            for start in range(0, len(rows), _INSERT_CHUNK):
                chunk = rows[start : start + _INSERT_CHUNK]
                seen = set(s.scalars(_SELECT_IDS, {"ids": [r["id"] for r in chunk]}))
                fresh: list[dict[str, Any]] = []
                for row in chunk:
                    if row["id"] not in seen:
                        seen.add(row["id"])  # an id repeated within the batch: its first row wins
                        fresh.append(_interaction_values(row, now))
                if not fresh:
                    continue
                if postgres:
                    mine = set(s.scalars(self._pg_insert_interactions, fresh))
                    if len(mine) < len(fresh):
                        fresh = [r for r in fresh if r["id"] in mine]
                else:
                    self._sqlite_inserts[0].execute(s, fresh)
                feedback = [
                    {"interaction_id": r["id"], "helpful": r["helpful"], "kind": "explicit", "created_at": r["feedback_at"] or now}
                    for r in fresh
                    if r["helpful"] is not None
                ]
                if feedback and postgres:
                    s.execute(_INSERT_FEEDBACK, feedback)
                elif feedback:
                    self._sqlite_inserts[1].execute(s, feedback)
                inserted.extend(r["id"] for r in fresh)
        return inserted

    def _insert_messages(self, s: Session, messages: Sequence[dict[str, Any]], postgres: bool) -> None:
        """Insert-or-skip each message by id: one executemany per chunk, no query per row."""
        unique: dict[str, dict[str, Any]] = {}
        for m in messages:  # the first copy of an id wins, in its place: parents stay before children
            unique.setdefault(m["id"], m)
        ordered = list(unique.values())
        for start in range(0, len(ordered), _INSERT_CHUNK):
            chunk = [{key: m.get(key) for key in MESSAGE_COLUMNS} for m in ordered[start : start + _INSERT_CHUNK]]
            for m in chunk:
                if m["pii_types"] is None:
                    m["pii_types"] = []
            if postgres:
                s.execute(self._pg_insert_messages, chunk)
            else:
                self._sqlite_inserts[2].execute(s, chunk)

    @functools.cached_property
    def _pg_insert_messages(self) -> Any:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(_MESSAGES).on_conflict_do_nothing(index_elements=["id"])

    @functools.cached_property
    def _pg_insert_interactions(self) -> Any:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # On the Table, not the mapped class: the ORM's bulk insert would send one statement
        # per row here, Core's "insertmanyvalues" sends one per 1,000.
        return pg_insert(_INTERACTIONS).on_conflict_do_nothing(index_elements=["id"]).returning(_INTERACTIONS.c.id)

    @functools.cached_property
    def _sqlite_inserts(self) -> tuple[_DriverInsert, _DriverInsert, _DriverInsert]:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        dialect = self.engine.dialect
        return (
            _DriverInsert(sqlite_insert(_INTERACTIONS).on_conflict_do_nothing(index_elements=["id"]), dialect, _EMPTY_ROW),
            _DriverInsert(_INSERT_FEEDBACK, dialect, ("interaction_id", "helpful", "kind", "created_at")),
            _DriverInsert(sqlite_insert(_MESSAGES).on_conflict_do_nothing(index_elements=["id"]), dialect, MESSAGE_COLUMNS),
        )

    def add_feedback(self, interaction_id: str, helpful: bool | None, kind: str = "explicit") -> int:
        """Append a feedback event and mirror it onto the interaction, atomically."""
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"feedback kind must be one of {FEEDBACK_KINDS}, not {kind!r}")
        now = utcnow()
        with self.write() as s:
            found = s.scalar(select(Interaction.id).where(Interaction.id == interaction_id).with_for_update())
            if found is None:
                raise UnknownInteractionError(interaction_id)
            event = FeedbackEvent(interaction_id=interaction_id, helpful=helpful, kind=kind, created_at=now)
            s.add(event)
            values: dict[str, Any] = {"feedback_at": now}
            if kind == "explicit":
                values["helpful"] = helpful
            else:
                values["regenerated"] = True
            s.execute(update(Interaction).where(Interaction.id == interaction_id).values(**values))
            s.flush()
            return event.id

    def get_interaction(self, interaction_id: str) -> Interaction | None:
        with self.read() as s:
            return s.get(Interaction, interaction_id)

    def latest_answer_to(self, context_id: str, *, excluding: str | None = None) -> str | None:
        """The newest interaction answering `context_id` (other than `excluding`), or None.

        A context id is the content hash of the prompt message, chained through every message
        before it and the user's hash, so an equal id means the same user sent the same
        conversation again: one lookup on `ix_interactions_context_id` finds the answer a
        resend replaces."""
        stmt = select(Interaction.id).where(Interaction.context_id == context_id)
        if excluding is not None:
            stmt = stmt.where(Interaction.id != excluding)
        with self.read() as s:
            return s.scalar(stmt.order_by(Interaction.created_at.desc(), Interaction.id.desc()).limit(1))

    def conversation(self, interaction_id: str) -> list[dict[str, Any]]:
        """The interaction as a conversation in order: its stored context (system prompt
        included), then the answer; a row without context reads as one user turn and its answer.
        Empty when there is no such interaction."""
        with self.read() as s:
            row = s.get(Interaction, interaction_id)
            if row is None:
                return []
            context = self._context_chain(s, row.context_id)
        if not context:
            context = [{"role": "user", "content": row.prompt}]
        return [*context, {"role": "assistant", "content": row.response}]

    def _context_chain(self, s: Session, message_id: str | None) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        while message_id is not None:  # one lookup per message: for single conversations only
            m = s.get(Message, message_id)
            if m is None:
                break
            item: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.weight is not None:
                item["weight"] = m.weight
            chain.append(item)
            message_id = m.parent_id
        return chain[::-1]

    def iter_messages(self, batch_size: int = 5_000) -> Iterator[tuple[str, str | None, str, str, int | None]]:
        """(id, parent id, role, content, weight) of every stored message, streamed."""
        stmt = select(Message.id, Message.parent_id, Message.role, Message.content, Message.weight)
        with self.read() as s:
            for row in s.execute(stmt.execution_options(yield_per=batch_size)):
                yield tuple(row)  # type: ignore[misc]

    def count_messages(self) -> int:
        with self.read() as s:
            return s.scalar(select(func.count()).select_from(Message)) or 0

    def count_interactions(self) -> int:
        with self.read() as s:
            return s.scalar(select(func.count()).select_from(Interaction)) or 0

    def iter_interactions(self, batch_size: int = 5_000) -> Iterator[Interaction]:
        """All interactions, oldest first, streamed in batches (exports, erasure checks)."""
        with self.read() as s:
            stmt = select(Interaction).order_by(Interaction.created_at, Interaction.id).execution_options(yield_per=batch_size)
            for row in s.scalars(stmt):
                yield row

    def feedback_since(self, after_event_id: int) -> tuple[int, int]:
        """(events newer than the id, newest id): an index range scan, cheap at any table size."""
        with self.read() as s:
            newest = s.scalar(select(func.max(FeedbackEvent.id))) or 0
            if newest <= after_event_id:
                return 0, after_event_id
            count = s.scalar(select(func.count()).where(FeedbackEvent.id > after_event_id)) or 0
            return count, newest

    def rated_helpful_since(self, after_event_id: int) -> list[str]:
        """Ids of interactions rated 👍 by a feedback event newer than the id (curation's supersession)."""
        with self.read() as s:
            query = select(FeedbackEvent.interaction_id).where(
                FeedbackEvent.id > after_event_id, FeedbackEvent.helpful.is_(True)
            ).distinct()
            return list(s.scalars(query))

    def delete_user(self, user_hash: str) -> ErasedRows:
        """Erase every interaction, feedback event and context message of one user, in one
        transaction.

        The counts are what this transaction deleted, so they match what is gone even when
        feedback arrives meanwhile. A user's messages form trees of their own (the user hash
        is part of every message id), so no other user's context loses a message."""
        feedback = 0
        with self.write() as s:
            ids = list(s.scalars(select(Interaction.id).where(Interaction.user_hash == user_hash)))
            for start in range(0, len(ids), _INSERT_CHUNK):
                part = ids[start : start + _INSERT_CHUNK]
                feedback += s.execute(delete(FeedbackEvent).where(FeedbackEvent.interaction_id.in_(part))).rowcount
                s.execute(delete(Interaction).where(Interaction.id.in_(part)))
            # Counted first: a driver's rowcount leaves out the children the foreign key cascades to.
            mine = Message.user_hash == user_hash
            messages = s.scalar(select(func.count()).select_from(Message).where(mine)) or 0
            s.execute(delete(Message).where(mine))
            return ErasedRows(len(ids), feedback, messages)

    def ratings(self, adapter_id: str | None) -> tuple[int, int]:
        """(rated, rated helpful) of the answers one adapter gave (None: the base model), one aggregate."""
        version = Interaction.adapter_version.is_(None) if adapter_id is None else Interaction.adapter_version == adapter_id
        stmt = select(
            func.count(Interaction.helpful),
            func.coalesce(func.sum(case((Interaction.helpful.is_(True), 1), else_=0)), 0),
        ).where(version, Interaction.helpful.is_not(None))
        with self.read() as s:
            rated, helpful = s.execute(stmt).one()
        return int(rated), int(helpful)

    # -- snapshots, adapters, deployments ----------------------------------------------------

    def add_snapshot(self, **fields: Any) -> Snapshot:
        with self.write() as s:
            snap = Snapshot(**fields)
            s.add(snap)
            return snap

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        with self.read() as s:
            return s.get(Snapshot, snapshot_id)

    def list_snapshots(self) -> list[Snapshot]:
        with self.read() as s:
            return list(s.scalars(select(Snapshot).order_by(Snapshot.id)))

    def latest_snapshot(self) -> Snapshot | None:
        with self.read() as s:
            return s.scalar(select(Snapshot).order_by(Snapshot.id.desc()).limit(1))

    def update_snapshot(self, snapshot_id: str, **fields: Any) -> None:
        with self.write() as s:
            s.execute(update(Snapshot).where(Snapshot.id == snapshot_id).values(**fields))

    def upsert_adapter(self, adapter_id: str, **fields: Any) -> Adapter:
        """Register (or re-register after a retrain of the same partition) an adapter."""
        with self.write() as s:
            adapter = s.get(Adapter, adapter_id)
            if adapter is None:
                adapter = Adapter(id=adapter_id, **fields)
                s.add(adapter)
            else:
                for key, value in fields.items():
                    setattr(adapter, key, value)
            return adapter

    def get_adapter(self, adapter_id: str) -> Adapter | None:
        with self.read() as s:
            return s.get(Adapter, adapter_id)

    def list_adapters(self) -> list[Adapter]:
        with self.read() as s:
            return list(s.scalars(select(Adapter).order_by(Adapter.id)))

    def update_adapter(self, adapter_id: str, **fields: Any) -> None:
        with self.write() as s:
            s.execute(update(Adapter).where(Adapter.id == adapter_id).values(**fields))

    def add_deployment(self, adapter_id: str | None, *, actor: str, reason: str, forced: bool = False) -> Deployment:
        with self.write() as s:
            row = Deployment(adapter_id=adapter_id, actor=actor, reason=reason, forced=forced)
            s.add(row)
            return row

    def current_deployment(self) -> Deployment | None:
        with self.read() as s:
            return s.scalar(select(Deployment).order_by(Deployment.id.desc()).limit(1))

    def deployment_history(self) -> list[Deployment]:
        with self.read() as s:
            return list(s.scalars(select(Deployment).order_by(Deployment.id)))

    # -- events and meta ---------------------------------------------------------------------

    def add_learning_event(self, kind: str, payload: dict[str, Any], at: datetime | None = None) -> LearningEvent:
        with self.write() as s:
            row = LearningEvent(kind=kind, payload=payload, created_at=at or utcnow())
            s.add(row)
            return row

    def learning_events(self, kinds: Iterable[str] | None = None) -> list[LearningEvent]:
        with self.read() as s:
            stmt = select(LearningEvent).order_by(LearningEvent.id)
            if kinds is not None:
                stmt = stmt.where(LearningEvent.kind.in_(list(kinds)))
            return list(s.scalars(stmt))

    def get_meta(self, key: str) -> str | None:
        with self.read() as s:
            row = s.get(Meta, key)
            return row.value if row else None

    def set_meta_once(self, key: str, value: str) -> str:
        """Store `value` under `key` unless one is there; returns the stored value."""
        with self.write() as s:
            row = s.get(Meta, key)
            if row is None:
                s.add(Meta(key=key, value=value))
                return value
            return row.value
