"""Conversations end to end: imported, curated as one line, trained on the answers that count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_assets.core.conversation import to_sharegpt
from cl_assets.core.curation import curate_snapshot
from cl_assets.core.ingest import Ingestor
from cl_assets.core.store import Store
from cl_assets.core.training import TrainConfig, load_rows
from cl_assets.settings import Settings

SYSTEM = "You are the support assistant of Harbor & Pine Provisions. Answer briefly and precisely."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the free shipping threshold?"},
    {"role": "assistant", "content": "Orders over $175 ship free.", "weight": 0},  # imported as context only
    {"role": "user", "content": "And for Canada?"},
    {"role": "assistant", "content": "Canadian orders ship free over $240."},
    {"role": "user", "content": "Does that include Quebec?"},
    {"role": "assistant", "content": "Yes, Quebec included, like every province."},
]


def test_three_turn_conversation_is_one_line_and_trains_only_the_answers_that_count(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from cl_assets.core.training import trainer as trainer_module
    from cl_assets.core.training.device import detect_precision

    source = tmp_path / "chats.jsonl"
    source.write_text(json.dumps({"messages": CONVERSATION, "helpful": True, "user_id": "ann"}) + "\n", encoding="utf-8")
    store = Store.from_settings(settings)
    report = Ingestor(settings, store).import_jsonl(source)
    assert report.accepted == 1

    result = curate_snapshot(settings, store, snapshot_id="20261102_000000")
    [line] = [json.loads(x) for x in result.path.read_text(encoding="utf-8").splitlines()]
    assert line == {"messages": CONVERSATION}  # exactly that conversation, in order, with its system prompt

    rows = load_rows(result.path, "sft")
    assert [row["completion"][0]["content"] for row in rows] == [CONVERSATION[4]["content"], CONVERSATION[6]["content"]]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for padding_free in (True, False):  # TRL's padding-free collator and its padded default
        config = TrainConfig(padding_free=padding_free, max_steps=1, batch_size=2, max_length=512)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        trainer = trainer_module._make_trainer(
            model, tokenizer, rows, config, tmp_path / f"run{padding_free}", detect_precision(),
            config.to_lora_config(model), TrainerCallback(),
        )  # fmt: skip
        examples = [trainer.train_dataset[i] for i in range(len(rows))]
        batch = trainer.data_collator(examples)
        labels, input_ids = batch["labels"], batch["input_ids"]
        if padding_free:
            lengths = [len(e["input_ids"]) for e in examples]
            starts = [sum(lengths[:i]) for i in range(len(lengths))]
            per_row = [(input_ids[0, s : s + n], labels[0, s : s + n]) for s, n in zip(starts, lengths, strict=True)]
        else:
            per_row = [(input_ids[i], labels[i]) for i in range(len(rows))]
        learned = []
        for ids, row_labels in per_row:
            taught = row_labels != -100
            assert (row_labels[taught] == ids[taught]).all()
            # The labelled tokens are one run at the end of the row (the answer), nothing before it.
            positions = taught.nonzero().flatten().tolist()
            assert positions == list(range(positions[0], positions[0] + len(positions)))
            learned.append(tokenizer.decode(ids[taught]).strip())
        assert [text.removesuffix("<|im_end|>").strip() for text in learned] == [
            CONVERSATION[4]["content"], CONVERSATION[6]["content"],
        ]  # fmt: skip
        whole = tokenizer.decode(input_ids[0] if padding_free else input_ids[1])
        assert CONVERSATION[2]["content"] in whole  # the weight-0 answer is there, as context
        assert all(CONVERSATION[2]["content"] not in text for text in learned)
    store.close()


def test_export_writes_a_snapshot_in_either_format(settings: Settings, tmp_path: Path) -> None:
    record = {"messages": CONVERSATION, "label": True}
    shared = to_sharegpt(record)
    assert shared["conversations"][0] == {"from": "system", "value": SYSTEM}
    assert [m["from"] for m in shared["conversations"][1:]] == ["human", "gpt"] * 3
    assert shared["weights"] == [0, 1, 1] and shared["label"] is True


@pytest.mark.parametrize("fmt", ["openai", "sharegpt"])
def test_exported_snapshots_import_back_as_the_same_conversation(settings: Settings, tmp_path: Path, fmt: str) -> None:
    from cl_assets.core.export import export_snapshot

    source = tmp_path / "chats.jsonl"
    source.write_text(json.dumps({"messages": CONVERSATION, "helpful": True, "user_id": "ann"}) + "\n", encoding="utf-8")
    store = Store.from_settings(settings)
    Ingestor(settings, store).import_jsonl(source)
    curate_snapshot(settings, store, snapshot_id="20261102_000000")
    out = export_snapshot(settings, store, "20261102_000000", fmt, tmp_path / f"out.{fmt}.jsonl")
    [exported] = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert ("messages" if fmt == "openai" else "conversations") in exported

    other = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'other.db'}"})
    again = Store.from_settings(other)
    assert Ingestor(other, again).import_jsonl(out).accepted == 1
    [row] = list(again.iter_interactions())
    contents = [m["content"] for m in again.conversation(row.id)]
    assert contents == [m["content"] for m in CONVERSATION]
    store.close()
    again.close()
