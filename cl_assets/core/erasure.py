"""Right to erasure: forget one user everywhere CL keeps what they said.

The user is found by the salted hash of their id (the raw id is never stored, so it is never
searched for). Their interactions, feedback and the messages of their stored conversation
contexts are deleted in one transaction. Snapshots
that held them, adapters trained on those snapshots and adapters warm-started from such an
adapter (the whole `parent_id` chain) are marked tainted in the registry: curation never
replays a tainted snapshot, training never trains on one nor warm-starts from a tainted
adapter, and a tainted adapter cannot be deployed without force. Files derived from the store
(the sanitized export, the knowledge facts, `registry.json`) are rewritten without the user.

A tainted adapter that is serving keeps serving: taking a model out of service is a decision
for a person, so the result names it and the CLI prints the command that rolls back.

Not touched here (see docs/security.md): the bytes of tainted snapshot files and adapter
folders, which stay on disk, flagged, until someone deletes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cl_assets.core.events import record_event
from cl_assets.core.ingest import Ingestor
from cl_assets.core.registry import Registry
from cl_assets.core.store import Adapter, Store
from cl_assets.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Erasure:
    """What forgetting one user did: counts and ids only (safe to print and to log)."""

    interactions: int
    feedback_events: int
    messages: int = 0  # context messages (the user's prompts, the answers they saw, the system prompt)
    tainted_snapshots: list[str] = field(default_factory=list)
    tainted_adapters: list[str] = field(default_factory=list)
    deployed_tainted: str | None = None  # the serving adapter, when it is now tainted
    rollback_to: str | None = None  # newest untainted adapter that passed its gate, if any

    def as_dict(self) -> dict[str, Any]:
        return {
            "interactions": self.interactions,
            "feedback_events": self.feedback_events,
            "messages": self.messages,
            "tainted_snapshots": self.tainted_snapshots,
            "tainted_adapters": self.tainted_adapters,
            "deployed_tainted": self.deployed_tainted,
            "rollback_to": self.rollback_to,
        }


def tainted_closure(adapters: list[Adapter], tainted_snapshots: set[str]) -> set[str]:
    """Adapters trained on a tainted snapshot, plus every adapter warm-started from one of them.

    Already tainted adapters seed the closure too, so a child of an adapter tainted by an
    earlier erasure is caught even if it was trained before that erasure was recorded.
    """
    tainted = {a.id for a in adapters if a.tainted or a.id in tainted_snapshots}
    changed = True
    while changed:  # parent chains are short; a fixpoint is simpler than a topological sort
        changed = False
        for adapter in adapters:
            if adapter.id not in tainted and adapter.parent_id in tainted:
                tainted.add(adapter.id)
                changed = True
    return tainted


def forget_user(settings: Settings, user_id: str, store: Store | None = None) -> Erasure:
    """Erase `user_id`'s interactions and feedback and taint what was built from them.

    Raises `SaltMismatchError` when the configured salt is not the store's: with another salt
    the hash would match nobody and the erasure would silently do nothing.
    """
    if not user_id:
        raise ValueError("a user id is needed; erasure finds the user by the salted hash of it")
    store = store or Store.from_settings(settings)
    ingestor = Ingestor(settings, store)  # checks the salt before anything is deleted
    user_hash = ingestor.hash_user(user_id)
    assert user_hash is not None

    interactions, feedback_events, messages = store.delete_user(user_hash)  # counted and deleted in one transaction

    snapshots = store.list_snapshots()
    newly_tainted_snapshots = sorted(s.id for s in snapshots if not s.tainted and user_hash in (s.user_hashes or []))
    for snapshot_id in newly_tainted_snapshots:
        store.update_snapshot(snapshot_id, tainted=True)
    all_tainted_snapshots = {s.id for s in snapshots if s.tainted} | set(newly_tainted_snapshots)

    adapters = store.list_adapters()
    closure = tainted_closure(adapters, all_tainted_snapshots)
    newly_tainted_adapters = sorted(a.id for a in adapters if a.id in closure and not a.tainted)
    for adapter_id in newly_tainted_adapters:
        store.update_adapter(adapter_id, tainted=True)

    registry = Registry(settings, store)
    deployed = store.current_deployment()
    deployed_id = deployed.adapter_id if deployed else None
    deployed_tainted = deployed_id if deployed_id in closure else None
    fallback = sorted(a.id for a in adapters if a.id not in closure and a.gate_passed is True)
    rollback_to = fallback[-1] if fallback else None

    ingestor.export_sanitized()
    if settings.knowledge_path.exists():  # facts quote answers: rebuild them without the user
        from cl_assets.core.knowledge import write_knowledge

        write_knowledge(settings, store)
    registry.write_mirror()

    result = Erasure(
        interactions=interactions,
        feedback_events=feedback_events,
        messages=messages,
        tainted_snapshots=newly_tainted_snapshots,
        tainted_adapters=newly_tainted_adapters,
        deployed_tainted=deployed_tainted,
        rollback_to=rollback_to,
    )
    # Neither the raw id nor its hash: the event log must not keep a handle on the erased user.
    record_event(settings, store, "erasure", **result.as_dict())
    if deployed_tainted:
        log.warning("the deployed adapter %s is now tainted (trained on erased data); it keeps serving", deployed_tainted)
    log.info(
        "erased %d interaction(s) and %d feedback event(s); tainted %d snapshot(s), %d adapter(s)",
        interactions,
        feedback_events,
        len(newly_tainted_snapshots),
        len(newly_tainted_adapters),
    )
    return result
