"""One learning cycle, step by step, keyed by a snapshot id: curate → train → evaluate → gate.

Each function is what one Dagster asset (or the CLI) calls; each is idempotent for its id
(an immutable snapshot or adapter that already exists is reused, not rebuilt), and each
records its outcome in the store so a later run — or a deploy in another run — can read it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cl_assets.core.events import record_event
from cl_assets.core.registry import Registry, RegistryError, adapter_dir, files_sha256
from cl_assets.core.snapshot import Problem, ProblemKind, snapshot_path, validate_snapshot
from cl_assets.core.store import Store
from cl_assets.core.training import LOSS_CURVE_PNG, TRAINING_JSON, TrainConfig, TrainProgress
from cl_assets.settings import Settings

if TYPE_CHECKING:  # heavy (Polars, matplotlib): imported where the step runs
    from cl_assets.core.curation import SnapshotResult
    from cl_assets.core.evaluation import Comparison
    from cl_assets.core.anchor import AnchorSpec
    from cl_assets.core.gates import Gate

log = logging.getLogger(__name__)


class CycleError(RuntimeError):
    """A step cannot run for this snapshot id; the message says what is missing."""


@dataclass(frozen=True)
class Trained:
    adapter_id: str
    output_dir: Path
    parent_id: str | None
    mode: str
    final_loss: float
    steps: int
    tokens: int
    tokens_per_s: float
    duration_s: float
    reused: bool

    @property
    def loss_curve(self) -> Path:
        return self.output_dir / LOSS_CURVE_PNG

    @property
    def scope(self) -> dict[str, Any]:
        """The scope router's figures from training.json (`scope_layer`, `scope_cv_recall`, ...); {} without one."""
        import json

        from cl_assets.core.training.trainer import TRAINING_JSON

        metrics = json.loads((self.output_dir / TRAINING_JSON).read_text(encoding="utf-8")).get("metrics", {})
        return {key: value for key, value in metrics.items() if key.startswith("scope_")}


def train_partition(
    settings: Settings,
    store: Store,
    snapshot_id: str,
    base_model: Path | str,
    config: TrainConfig,
    progress: Callable[[TrainProgress], None] | None = None,
    anchor_path: Path | None = None,
) -> Trained:
    """Train (or reuse) the adapter of one snapshot and register it.

    `anchor_path`: replay rows to mix in instead of the settings' anchor set (recipe
    experiments, `bench/learning_recipes.py`); None uses `ensure_anchor`."""
    from cl_assets.core.training import train_adapter

    snapshot = store.get_snapshot(snapshot_id)
    if snapshot is None:
        raise CycleError(f"snapshot {snapshot_id} does not exist; materialize curated_snapshot for it first")
    if snapshot.tainted:
        raise CycleError(f"snapshot {snapshot_id} is tainted (it held erased data); curate a new one")
    out = adapter_dir(settings, snapshot_id)
    registry = Registry(settings, store)
    deployed = registry.current().adapter_id
    parent_id = deployed if settings.warm_start and deployed and deployed != snapshot_id else None
    if parent_id is not None:
        parent_row = store.get_adapter(parent_id)
        if parent_row is None or parent_row.tainted:
            parent_id = None  # never warm-start from erased data

    reused = out.is_dir()
    if not reused:
        parent_path = registry.verified_path(parent_id) if parent_id else None
        anchor_path = anchor_path if anchor_path is not None else ensure_anchor(settings, base_model)
        train_adapter(
            Path(snapshot.path),
            base_model,
            out,
            config,
            parent_adapter=parent_path,
            snapshot_sha256=snapshot.sha256,
            anchor_path=anchor_path,
            progress=progress,
        )
    # The folder appears only complete (atomic rename), so an unregistered one is safe to register.
    meta = json.loads((out / TRAINING_JSON).read_text(encoding="utf-8"))
    existing = store.get_adapter(snapshot_id)
    if existing is None or not reused:
        store.upsert_adapter(
            snapshot_id,
            path=str(out),
            files_sha256=files_sha256(out),
            parent_id=Path(meta["parent_adapter"]).name if meta.get("parent_adapter") else None,
            mode=meta["mode"],
            train_metrics=_train_summary(meta),
        )
        record_event(settings, store, "train", adapter=snapshot_id, parent=parent_id, mode=meta["mode"], **_train_summary(meta))
    adapter = store.get_adapter(snapshot_id)
    assert adapter is not None
    m = adapter.train_metrics
    return Trained(
        adapter_id=snapshot_id,
        output_dir=out,
        parent_id=adapter.parent_id,
        mode=adapter.mode,
        final_loss=m["final_loss"],
        steps=m["steps"],
        tokens=m["tokens"],
        tokens_per_s=m["tokens_per_s"],
        duration_s=m["duration_s"],
        reused=reused,
    )


def _evaluation_prompts(settings: Settings) -> list[str]:
    """Every prompt an evaluation may ask: the shipped sets, the demo's second one, the user's own."""
    from cl_assets.core.evaluation import load_qa

    paths = [settings.shipped(name) for name in ("qa_eval.jsonl", "qa_general.jsonl", "demo/qa_eval_2.jsonl")]
    paths.append(settings.taught_qa_path)
    seen: set[Path] = set()
    prompts: list[str] = []
    for path in paths:
        if path.exists() and path.resolve() not in seen:
            seen.add(path.resolve())
            prompts += [item.prompt for item in load_qa(path)]
    return prompts


def anchor_spec(settings: Settings, base_model: Path | str) -> AnchorSpec:
    """What the anchor set for this base model, chat and evaluation sets is made of (`core/anchor.py`)."""
    from cl_assets.core.anchor import AnchorSpec, base_fingerprint, exclusion_digest

    return AnchorSpec(base_model=base_fingerprint(base_model), system_prompt=settings.system_prompt,
                      rows=settings.anchor_rows, seed=settings.seed, factual_per_kind=settings.anchor_factual_per_kind,
                      excluded=exclusion_digest(_evaluation_prompts(settings)))


def ensure_anchor(
    settings: Settings, base_model: Path | str, progress: Callable[[str, int, int], None] | None = None
) -> Path | None:
    """The cached anchor file of the base model (built on first use); None when `anchor_rows` is 0.

    Prompts that appear in the evaluation sets are excluded, so replay never teaches an answer
    the gates then score."""
    if settings.anchor_rows <= 0:
        return None
    from cl_assets.core.anchor import ANCHOR_FILE, ensure_anchor_set
    from cl_assets.core.model import load_base_model

    spec = anchor_spec(settings, base_model)
    shipped = settings.shipped(f"anchors/{spec.key}/{ANCHOR_FILE}")
    path, _ = ensure_anchor_set(settings.data_dir / "anchors", lambda: load_base_model(base_model), spec,
                                _evaluation_prompts(settings), progress, shipped=shipped)
    return path


def _train_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The figures of training.json the registry keeps."""
    return {
        "final_loss": meta["final_loss"],
        "steps": meta["steps"],
        "tokens": meta["train_tokens"],
        "tokens_per_s": meta["tokens_per_s"],
        "duration_s": meta["duration_s"],
    }


def load_check(settings: Settings, store: Store, adapter_id: str, base_model: Path | str) -> str | None:
    """None when the adapter's files match the registry and load onto the base; else the problem."""
    from cl_assets.core.model import AdapterSet, ModelError, load_base_model

    try:
        path = Registry(settings, store).verified_path(adapter_id)
        adapters = AdapterSet(load_base_model(base_model))
        adapters.ensure_loaded(adapter_id, path)
        adapters.activate(adapter_id)
    except (RegistryError, ModelError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class Evaluated:
    adapter_id: str
    report: Comparison
    gates: list[Gate]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def chart(self) -> Path:
        from cl_assets.core.evaluation import REPORT_PNG

        assert self.report.out_dir is not None
        return self.report.out_dir / REPORT_PNG


def evaluate_partition(
    settings: Settings, store: Store, adapter_id: str, base_model: Path | str,
    progress: Callable[[str], None] | None = None,
) -> Evaluated:
    """Base vs candidate vs deployed on the same prompts; the gate verdict is recorded on the adapter."""
    from cl_assets.core.evaluation import compare_for_snapshot
    from cl_assets.core.gates import evaluation_gates
    from cl_assets.core.model.precision import serving_adapters

    registry = Registry(settings, store)
    if store.get_adapter(adapter_id) is None:
        raise CycleError(f"adapter {adapter_id} is not trained; materialize lora_adapter for it first")
    candidate_path = registry.verified_path(adapter_id)
    deployed = registry.current().adapter_id
    deployed_path = registry.verified_path(deployed) if deployed and deployed != adapter_id else None
    adapters = serving_adapters(settings, base_model)  # judged as the chat will serve it
    report = compare_for_snapshot(
        settings,
        adapters,
        adapter_id,
        candidate_path,
        deployed_id=deployed if deployed_path else None,
        deployed_path=deployed_path,
        system_prompt=settings.system_prompt,
        progress=progress,
    )
    gates = evaluation_gates(report, settings)
    passed = all(g.passed for g in gates)
    store.update_adapter(
        adapter_id,
        eval_report=report.to_dict()["summary"],
        accuracy=report.candidate_taught.accuracy,
        general_accuracy=report.general[adapter_id].accuracy if report.general else None,
        gate_passed=passed,
        gate_reason="; ".join(g.reason for g in gates if not g.passed) or None,
    )
    record_event(
        settings, store, "evaluate", adapter=adapter_id, deployed=deployed, passed=passed,
        accuracy=report.candidate_taught.accuracy, gates={g.name: g.passed for g in gates},
    )
    return Evaluated(adapter_id, report, gates)


@dataclass(frozen=True)
class Curated:
    snapshot: SnapshotResult
    reused: bool
    chatml_problems: list[Problem]
    pii_problems: list[Problem]
    enough_rows: bool


def _set_aside_unregistered(settings: Settings, snapshot_id: str) -> None:
    """Move a snapshot file that has no row out of the way (renamed to an ignored dot-file).

    A snapshot's row is written right after its file is renamed into place, so a file without a
    row is what a run killed in between leaves behind. It is never read (nothing trusts an
    unregistered file) but it would block every retry of its partition.
    """
    import os
    from datetime import UTC, datetime

    path = snapshot_path(settings, snapshot_id)
    if path.exists():
        aside = path.with_name(f".{path.name}.unregistered-{datetime.now(UTC):%Y%m%d_%H%M%S_%f}")
        os.replace(path, aside)
        log.warning("%s was never registered (its run was interrupted); set aside as %s", path.name, aside.name)


def curate_partition(settings: Settings, store: Store, snapshot_id: str, note: str | None = None) -> Curated:
    """Curate the snapshot of this id (or reuse it: snapshots are immutable) and validate it."""
    from cl_assets.core.curation import SnapshotResult, curate_snapshot

    row = store.get_snapshot(snapshot_id)
    if row is None:
        _set_aside_unregistered(settings, snapshot_id)
        result = curate_snapshot(settings, store, snapshot_id=snapshot_id, note=note or None)
    else:
        result = SnapshotResult(row.id, Path(row.path), row.sha256, row.n_rows, row.counts)
    problems = validate_snapshot(result.path)
    return Curated(
        snapshot=result,
        reused=row is not None,
        chatml_problems=[p for p in problems if p.kind is not ProblemKind.PII],
        pii_problems=[p for p in problems if p.kind is ProblemKind.PII],
        enough_rows=result.n_rows >= settings.min_snapshot_rows,
    )
