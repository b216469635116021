"""No gold PII value of any corpus reaches disk or a log line through the real ingestion.

Each corpus (Faker's values in six contexts, Presidio's synthetic dataset and recognizer
vectors, the generated corpus) is sampled small and seeded, imported with
`Ingestor.import_jsonl`, exported, curated into a snapshot, and then the SQLite file, the
export, the snapshot, the log files and the captured log records are searched for every
labelled value, as `test_ingest.py` does for the demo conversations.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import pytest

from cl_assets.core.curation import curate_snapshot
from cl_assets.core.ingest import Ingestor
from cl_assets.core.pii import sanitize
from tests.conftest import REPO, make_settings

sys.path.insert(0, str(REPO / "bench"))
from faker_corpus import faker_corpus, lookalike_corpus  # noqa: E402
from pii_corpus import Labelled, generated_corpus, recognizer_vectors, synth_dataset  # noqa: E402

SAMPLE = 120  # texts per corpus: seconds, not minutes


def _sample(corpus: list[Labelled], seed: int) -> list[Labelled]:
    with_pii = [item for item in corpus if item.spans]
    return random.Random(seed).sample(with_pii, min(SAMPLE, len(with_pii)))


def _shared(load):  # type: ignore[no-untyped-def]
    try:
        return load()
    except FileNotFoundError as exc:
        pytest.skip(f"shared data missing: {exc}")


CORPORA = {
    "faker": lambda: faker_corpus(SAMPLE * 2, seed=101),
    "generated": lambda: generated_corpus(SAMPLE * 3, seed=102),
    "synth_dataset_v2": lambda: _shared(synth_dataset),
    "recognizer_vectors": lambda: _shared(recognizer_vectors),
}


# Presidio's vectors that CL leaves on purpose (see MIN_RECALL in test_pii.py): the weak SSN
# shapes and a bare 9-digit number with no context, "::" with no host, and the address
# part of the five-part "192.168.1.1.1" (read as a version).
DELIBERATE = {"078-051121", "07805-1121", "078051121", "::", "::/0", "::/128", "192.168.1.1"}


def _gold(corpus: list[Labelled]) -> set[str]:
    """Every labelled value, as written in the text (escaped forms included)."""
    values = {item.text[s:e] for item in corpus for s, e, _ in item.spans if e - s >= 6}
    return values - DELIBERATE


@pytest.mark.parametrize("name", list(CORPORA))
def test_no_gold_value_reaches_disk_or_logs(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = _sample(CORPORA[name](), seed=len(name))
    gold = _gold(corpus)
    assert len(gold) > 20
    settings = make_settings(tmp_path)
    source = tmp_path / "import.jsonl"
    # Clean rows too, so the snapshot is not empty: curation drops rows where PII was found,
    # so a value the sanitizer missed is exactly what would reach it.
    clean = [text for _, text in lookalike_corpus(40, seed=len(name))]
    with source.open("w", encoding="utf-8") as fh:
        for i, item in enumerate(corpus):  # each text once as a prompt, once inside an answer
            row = {"prompt": item.text, "response": f"Noted: {item.text}", "user_id": f"u{i % 7}", "helpful": True}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        for i, text in enumerate(clean):
            answer = f"Thanks, we will look into it and write back within two working days ({i})."
            fh.write(json.dumps({"prompt": text, "response": answer, "user_id": f"c{i}", "helpful": True}) + "\n")
    caplog.set_level(logging.DEBUG)
    ingestor = Ingestor(settings)
    report = ingestor.import_jsonl(source)
    assert report.accepted + report.duplicates == len(corpus) + len(clean) and report.quarantined == 0
    ingestor.export_sanitized()
    snapshot = curate_snapshot(settings, ingestor.store, snapshot_id="20261201_000000")
    assert snapshot.n_rows > 0 and snapshot.path.is_file()
    ingestor.store.close()
    source.unlink()  # the raw input is the one file allowed to hold the values

    files = [f for base in (settings.home,) for f in base.rglob("*") if f.is_file()]
    assert any(f.suffix in (".db", ".sqlite") for f in files) or any("sqlite" in f.name for f in files), files
    leaks = [(f.name, value) for f in files for value in gold if value.encode() in f.read_bytes()]
    log_text = "\n".join(record.getMessage() for record in caplog.records)
    leaks += [("log record", value) for value in gold if value in log_text]
    assert leaks == []


def test_lookalikes_come_back_unchanged_from_the_store(tmp_path: Path) -> None:
    """The other side: numbers that are not PII are stored as written."""
    items = lookalike_corpus(110, seed=103)
    settings = make_settings(tmp_path)
    source = tmp_path / "import.jsonl"
    source.write_text("".join(json.dumps({"prompt": t, "response": "ok"}) + "\n" for _, t in items), encoding="utf-8")
    ingestor = Ingestor(settings)
    ingestor.import_jsonl(source)
    path, count = ingestor.export_sanitized()
    ingestor.store.close()
    stored = {json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines()}
    assert count == len(items)
    changed = [t for _, t in items if t not in stored]
    assert changed == [] and all(sanitize(t).text == t for _, t in items)
