"""The real SmolLM2 through two learning cycles on the demo data, with the default settings:
curate → train → evaluate → gate → deploy, then the demo's second month warm-started from the
deployed adapter.

Asserted are the learning issue's targets: the first adapter knows >= 90 % of the taught facts
and the general set (>= 200 questions the base answers right) drops by at most 2 points, paired
item by item, so the gate deploys it; the second knows >= 90 % of its new and changed facts,
gives the old answer to a changed fact at most 10 % of the time, keeps >= 90 % of the unchanged
facts, and still drops the general set by at most 2 points. The adapters are scope-routed
(core/scope.py): general questions go to the base, which is what serves. docs/learning.md has
the figures and the adapter-alone ones beside them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cl_assets.core.cycle import curate_partition, evaluate_partition, train_partition
from cl_assets.core.ingest import Ingestor
from cl_assets.core.registry import Registry
from cl_assets.core.training import TrainConfig
from cl_assets.settings import Settings
from tests.conftest import REPO, make_settings


@pytest.mark.slow
def test_real_smollm2_learns_the_taught_facts_without_forgetting(tmp_path: Path, smollm2_dir: Path) -> None:
    # conftest turns anchoring off for the tiny models; this test runs the real default.
    anchor_rows = Settings.model_fields["anchor_rows"].default
    settings = make_settings(tmp_path, base_model=str(smollm2_dir), anchor_rows=anchor_rows)
    settings.data_dir.mkdir(parents=True)
    for name in ("qa_eval.jsonl", "qa_general.jsonl"):
        shutil.copy(REPO / "data" / name, settings.data_dir / name)
    ingestor = Ingestor(settings)
    ingestor.import_jsonl(REPO / "data" / "demo" / "interactions.jsonl")

    sid = "20261120_120000"
    curated = curate_partition(settings, ingestor.store, sid)
    assert curated.chatml_problems == [] and curated.pii_problems == [] and curated.enough_rows
    trained = train_partition(settings, ingestor.store, sid, smollm2_dir, TrainConfig.from_settings(settings))
    evaluated = evaluate_partition(settings, ingestor.store, sid, smollm2_dir)

    report = evaluated.report
    record = json.loads((trained.output_dir / "training.json").read_text())
    pair, drift = report.general_paired, report.drift
    assert pair is not None and drift is not None
    figures = {
        "snapshot_rows": curated.snapshot.n_rows,
        "anchor_rows": record["anchor"]["rows"] if record["anchor"] else 0,
        "train": {"steps": trained.steps, "final_loss": trained.final_loss, "tokens_per_s": trained.tokens_per_s,
                  "duration_s": trained.duration_s, "mode": trained.mode},
        "taught": {k: v.accuracy for k, v in report.taught.items()},
        "general": {k: v.accuracy for k, v in report.general.items()},
        "general_paired": {"n": pair.n, "lost": len(pair.lost), "gained": len(pair.gained), "p_worse": pair.p_worse},
        "drift": drift.summary(),
        "scope": trained.scope,
        "routed_to_base": {"taught": report.candidate_taught.routed_to_base,
                           "general": report.general[sid].routed_to_base},
        "gates": {g.name: [g.passed, g.reason] for g in evaluated.gates},
    }
    (tmp_path / "learning_figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))

    assert figures["anchor_rows"] >= 100, figures  # the shipped anchor set of the embedded base was used
    assert pair.n >= 200 and drift.n == pair.n and drift.tokens > 0
    assert figures["scope"]["scope_layer"] == 15, figures  # the router reads the layer LoRA starts at
    assert report.candidate_taught.accuracy >= 0.9, figures
    assert pair.drop <= 0.02 and evaluated.passed, figures
    assert ingestor.store.get_adapter(sid).gate_passed is True

    # The second month, warm-started from the deployed first adapter, asked its own taught set.
    Registry(settings, ingestor.store).deploy(sid, actor="test", reason="the first cycle passed its gates")
    second_settings = settings.model_copy(update={"qa_taught_file": REPO / "data" / "demo" / "qa_eval_2.jsonl"})
    ingestor.import_jsonl(REPO / "data" / "demo" / "interactions_2.jsonl")
    sid2 = "20261220_120000"
    curate_partition(second_settings, ingestor.store, sid2)
    trained2 = train_partition(second_settings, ingestor.store, sid2, smollm2_dir,
                               TrainConfig.from_settings(second_settings))
    assert trained2.parent_id == sid
    evaluated2 = evaluate_partition(second_settings, ingestor.store, sid2, smollm2_dir)
    taught2 = evaluated2.report.candidate_taught
    groups = {name: score.accuracy for name, score in taught2.groups().items()}
    pair2 = evaluated2.report.general_paired
    assert pair2 is not None and taught2.stale is not None
    second = {"taught": taught2.accuracy, "groups": groups, "stale_rate": taught2.stale.stale_rate,
              "general_lost": len(pair2.lost), "general_drop": pair2.drop, "steps": trained2.steps,
              "gates": {g.name: [g.passed, g.reason] for g in evaluated2.gates}}
    print(json.dumps(second, indent=2))
    changing = [i for i in taught2.items if i.group in ("new", "changed")]
    assert len(changing) == 9 and sum(i.correct for i in changing) / len(changing) >= 0.9, second
    assert taught2.stale.stale_rate is not None and taught2.stale.stale_rate <= 0.1, second
    assert groups["kept"] >= 0.9, second
    assert pair2.drop <= 0.02, second
