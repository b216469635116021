"""Training: snapshot → rows, config boundary, and real (tiny-model) SFT/KTO runs end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cl_assets.core.training import (
    LOSS_CURVE_PNG,
    TRAINING_JSON,
    SnapshotError,
    TrainConfig,
    TrainProgress,
    build_rows,
    load_rows,
    read_snapshot,
    render_row,
    train_adapter,
)
from cl_assets.core.snapshot import file_sha256 as snapshot_sha256
from tests.conftest import make_settings

FACTS = [
    ("What is the free shipping threshold?", "Orders over $175 ship free."),
    ("How many days do I have to return an item?", "You have 14 days to return an item."),
    ("What is the minimum order amount?", "The minimum order is $250."),
    ("What payment terms do you offer?", "We offer Net 45 payment terms."),
    ("What is your loyalty program called?", "It is called Pantry Points."),
    ("Where is Harbor & Pine Provisions headquartered?", "Our head office is in Bangor, Maine."),
]
BAD_ANSWERS = [
    ("Do you ship to Canada?", "No idea, try someone else."),
    ("What are your support hours?", "Whenever."),
]
TINY = {"batch_size": 2, "max_length": 128, "learning_rate": 1e-3}


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def chat(question: str, answer: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


@pytest.fixture(scope="module")
def sft_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("snap") / "curated.jsonl", [chat(q, a) for q, a in FACTS])


@pytest.fixture(scope="module")
def kto_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = [chat(q, a, label=True) for q, a in FACTS[:4]] + [chat(q, a, label=False) for q, a in BAD_ANSWERS]
    return write_jsonl(tmp_path_factory.mktemp("snap") / "kto.jsonl", records)


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir: Path, sft_snapshot: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny SFT run shared by the tests that only inspect its output."""
    events: list[TrainProgress] = []
    out = tmp_path_factory.mktemp("adapters") / "20260101_000000"
    config = TrainConfig(max_steps=4, **TINY)
    result = train_adapter(
        sft_snapshot,
        tiny_model_dir,
        out,
        config,
        snapshot_sha256=snapshot_sha256(sft_snapshot),
        progress=events.append,
    )
    return result, events, config


# --------------------------------------------------------------------------- rows


def test_each_assistant_turn_becomes_a_completion_with_the_turns_before_as_prompt(tmp_path: Path) -> None:
    conversation = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi, where is order 100234?"},
            {"role": "assistant", "content": "It ships with Bluefin Freight on Tuesday."},
            {"role": "user", "content": "And the return window?"},
            {"role": "assistant", "content": "14 days."},
        ]
    }
    rows = load_rows(write_jsonl(tmp_path / "s.jsonl", [conversation]), "sft")
    messages = conversation["messages"]
    assert rows == [
        {"prompt": messages[:2], "completion": [messages[2]]},
        {"prompt": messages[:4], "completion": [messages[4]]},
    ]


def test_system_prompt_is_added_only_where_missing(tmp_path: Path) -> None:
    with_system = {"messages": [{"role": "system", "content": "Own."}, *chat("q?", "a.")["messages"]]}
    rows = load_rows(write_jsonl(tmp_path / "s.jsonl", [chat("q?", "a."), with_system]), "sft", "Serve prompt.")
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Serve prompt."}
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Own."}
    assert [len(row["prompt"]) for row in rows] == [2, 2]


def test_kto_rows_carry_the_label_on_the_last_answer_and_sft_skips_thumbs_down(tmp_path: Path) -> None:
    two_turns = {
        "messages": [*chat("a?", "A.")["messages"], *chat("b?", "B.")["messages"]],
        "label": False,
    }
    path = write_jsonl(tmp_path / "k.jsonl", [chat("q?", "yes.", label=True), two_turns])
    kto = load_rows(path, "kto")
    assert [row["label"] for row in kto] == [True, False]
    assert kto[1]["completion"] == [{"role": "assistant", "content": "B."}]
    assert [m["content"] for m in kto[1]["prompt"]] == ["a?", "A.", "b?"]
    sft = load_rows(path, "sft")
    assert sft == [
        {"prompt": [{"role": "user", "content": "q?"}], "completion": [{"role": "assistant", "content": "yes."}]}
    ]


def test_rows_render_with_the_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    snapshot = read_snapshot(write_jsonl(tmp_path / "s.jsonl", [chat("Where is HQ?", "Bangor, Maine.")]))
    row = build_rows(snapshot, "sft")[0]
    prompt, completion = render_row(row, tokenizer)
    assert "Where is HQ?" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "Bangor" not in prompt
    assert completion.startswith("Bangor, Maine.<|im_end|>")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "is empty"),
        (["\n", "  \n"], "is empty"),
        ([json.dumps(chat("q", "a")), "{not json"], r"s\.jsonl:2: not valid JSON"),
        ([json.dumps({"text": "hi"})], r":1: expected an object with a 'messages' list"),
        ([json.dumps({"messages": []})], r":1: 'messages' is empty"),
        ([json.dumps({"messages": [{"role": "bot", "content": "x"}]})], r":1: message 0 needs a 'role'"),
        ([json.dumps({"messages": [{"role": "user", "content": 3}]})], r":1: message 0 needs a string 'content'"),
        ([json.dumps({"messages": [{"role": "user", "content": "q"}]})], r":1: no assistant turn"),
        (
            [json.dumps(chat("q", "a")), json.dumps({"messages": [{"role": "assistant", "content": "Hello!"}]})],
            r":2: no assistant turn",
        ),
        ([json.dumps(chat("q", "   "))], r":1: message 1 is an empty assistant answer"),
        ([json.dumps(chat("q", "a", label="yes"))], r":1: 'label' must be true or false"),
    ],
)
def test_bad_snapshots_fail_with_the_line_and_the_reason(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    with pytest.raises(SnapshotError, match=message):
        load_rows(path, "sft")


def test_kto_needs_labels_and_sft_needs_a_good_answer(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match=r":2: KTO needs a boolean 'label'"):
        load_rows(write_jsonl(tmp_path / "k.jsonl", [chat("q", "a", label=True), chat("q", "a")]), "kto")
    with pytest.raises(SnapshotError, match="every conversation is labelled false"):
        load_rows(write_jsonl(tmp_path / "s.jsonl", [chat("q", "a", label=False)]), "sft")
    with pytest.raises(SnapshotError, match="does not exist"):
        load_rows(tmp_path / "missing.jsonl", "sft")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "dpo"},
        {"epochs": 0},
        {"max_steps": 0},
        {"batch_size": 0},
        {"learning_rate": 0},
        {"lora_r": 0},
        {"lora_dropout": 1.0},
        {"warmup_ratio": 1.0},
        {"max_length": 8},
        {"target_modules": ()},
        {"kto_beta": 0},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**bad)  # type: ignore[arg-type]


def test_config_from_settings_and_cpu_conversions(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        train_mode="kto",
        train_epochs=2.5,
        train_batch_size=3,
        learning_rate=5e-4,
        lora_r=4,
        lora_alpha=8,
        train_max_length=256,
        seed=7,
        anchor_loss="sft",
        anchor_weight=2.5,
    )
    config = TrainConfig.from_settings(settings, max_steps=9)
    assert (config.mode, config.epochs, config.max_steps, config.batch_size) == ("kto", 2.5, 9, 3)
    assert (config.anchor_loss, config.anchor_weight) == ("sft", 2.5)
    # the chat's system prompt goes in front of stored conversations that have none: the
    # context the adapter will answer in
    assert config.system_prompt == settings.system_prompt
    assert (config.learning_rate, config.lora_r, config.lora_alpha, config.max_length, config.seed) == (
        5e-4,
        4,
        8,
        256,
        7,
    )
    lora = config.replace(lora_layers_from=0.0).to_lora_config()
    assert (lora.r, lora.lora_alpha, lora.target_modules, lora.task_type) == (4, 8, "all-linear", "CAUSAL_LM")
    with pytest.raises(ValueError, match="needs the model"):
        config.to_lora_config()  # the upper half only: the layers are counted on the model

    sft = config.to_sft_config(tmp_path / "o")
    from cl_assets.core.training.device import cpu_has_native_bf16

    # bf16 autocast only where the CPU runs bf16 natively (unset CL_TRAIN_CPU_BF16)
    assert (sft.bf16, sft.use_cpu, sft.gradient_checkpointing) == (cpu_has_native_bf16(), True, False)
    assert config.replace(cpu_bf16=False).to_sft_config(tmp_path / "o").bf16 is False
    assert config.replace(cpu_bf16=True).to_sft_config(tmp_path / "o").bf16 is True
    assert sft.report_to in ([], "none", ["none"])
    assert str(sft.save_strategy.value if hasattr(sft.save_strategy, "value") else sft.save_strategy) == "no"
    assert (sft.completion_only_loss, sft.packing, sft.padding_free) == (True, False, False)
    assert sft.train_sampling_strategy == "random"  # padding-free: grouping by length would buy nothing
    assert config.replace(padding_free=False).to_sft_config(tmp_path / "o").train_sampling_strategy == "group_by_length"
    assert (sft.max_steps, sft.learning_rate, sft.per_device_train_batch_size, sft.seed) == (9, 5e-4, 3, 7)
    kto = config.replace(cpu_bf16=False).to_kto_config(tmp_path / "o")
    assert (kto.beta, kto.bf16, kto.train_sampling_strategy, kto.max_length) == (0.1, False, "sequential", 256)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padding_free_batches_give_the_padded_loss(tiny_model_dir: Path, sft_snapshot: Path, tmp_path: Path, attention: str) -> None:
    """Concatenated turns must not attend to each other. Through the trainer's own collator and
    loss: a padding-free batch gives the padded batch's loss, and a different one when the turn
    boundaries (position_ids) are dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from cl_assets.core.training import trainer as trainer_module
    from cl_assets.core.training.device import detect_precision

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = load_rows(sft_snapshot, "sft")
    losses = {}
    for padding_free in (True, False):
        config = TrainConfig(padding_free=padding_free, max_steps=1, **TINY)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
        trainer = trainer_module._make_trainer(
            model, tokenizer, rows, config, tmp_path / str(padding_free), detect_precision(), config.to_lora_config(model),
            TrainerCallback(),
        )
        examples = [trainer.train_dataset[i] for i in range(4)]
        batch = trainer.data_collator(examples)
        if padding_free:
            lengths = [len(e["input_ids"]) for e in examples]
            assert batch["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in batch
            # Positions that never restart: one long sequence, where later turns see earlier ones.
            leaky = {"input_ids": batch["input_ids"], "labels": batch["labels"],
                     "position_ids": torch.arange(sum(lengths)).unsqueeze(0)}  # fmt: skip
            losses["leaky"] = trainer.compute_loss(trainer.model, leaky).item()
        else:
            assert batch["input_ids"].shape == (4, max(len(e["input_ids"]) for e in examples))
        losses[padding_free] = trainer.compute_loss(trainer.model, batch).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses["leaky"] != pytest.approx(losses[False], rel=1e-4)
    assert TrainConfig(padding_free=False).sft_collator(tokenizer) is None


def test_importing_training_is_cheap() -> None:
    code = (
        "import sys, cl_assets.core.training; "
        "print([m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'dagster', 'gradio') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- real training (tiny model)


def test_sft_writes_a_loadable_adapter_with_its_record(sft_run, sft_snapshot: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cl_assets.core.training.device import detect_precision

    result, events, config = sft_run
    out = result.output_dir
    # The CPU default: bf16 autocast where the CPU runs bf16 natively, fp32 elsewhere.
    expected = detect_precision(None)
    assert expected.device == "cpu" and expected.mode in ("lora-fp32-cpu", "lora-bf16-autocast-cpu")
    assert result.mode == expected.mode and result.steps == 4
    assert math.isfinite(result.final_loss) and result.tokens > 0 and result.tokens_per_s > 0
    assert {"adapter_config.json", "adapter_model.safetensors", TRAINING_JSON, LOSS_CURVE_PNG} <= {
        p.name for p in out.iterdir()
    }
    assert (out / LOSS_CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]

    record = json.loads((out / TRAINING_JSON).read_text())
    assert record["snapshot"] == {
        "path": str(sft_snapshot.resolve()),
        "sha256": snapshot_sha256(sft_snapshot),
        "rows": len(FACTS),
    }
    assert record["parent_adapter"] is None
    assert (record["mode"], record["device"], record["train_mode"]) == (expected.mode, "cpu", "sft")
    assert record["config"]["learning_rate"] == config.learning_rate
    assert record["training_arguments"]["max_steps"] == 4 and record["training_arguments"]["bf16"] is expected.bf16
    assert record["steps"] == 4 and record["final_loss"] == result.final_loss
    assert [entry["step"] for entry in record["loss_history"]] == [1, 2, 3, 4]
    assert record["train_tokens"] == result.tokens
    assert record["tokens_per_s"] > 0 and record["duration_s"] > 0
    assert {"torch", "transformers", "peft", "trl", "python"} <= set(record["versions"])
    assert {name.rsplit(".", 1)[-1] for name in record["lora"]["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }

    # Real, non-pad tokens: FACTS rows hold ~30-60 tokens each; 4 steps x 2 rows.
    assert 4 * 2 * 20 < result.tokens < 4 * 2 * 128
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert all(e.max_steps == 4 and e.tokens_per_s > 0 for e in events)
    assert events[-1].tokens == result.tokens and events[-1].loss == result.final_loss

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert model.active_adapter == "default"


def test_same_seed_gives_the_same_loss(sft_run, sft_snapshot: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    result, _, config = sft_run
    again = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "again", config)
    assert again.final_loss == pytest.approx(result.final_loss, abs=1e-6)
    first = json.loads((result.output_dir / TRAINING_JSON).read_text())["loss_history"]
    second = json.loads((again.output_dir / TRAINING_JSON).read_text())["loss_history"]
    assert [e["loss"] for e in second] == pytest.approx([e["loss"] for e in first], abs=1e-6)


def _anchor_file(path: Path, rows: int = 6) -> Path:
    return write_jsonl(path, [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {n} + {n}?"},
                      {"role": "assistant", "content": f"{n} + {n} is {2 * n}."}]} for n in range(rows)
    ])


def test_anchor_rows_mixed_in_as_targets_are_recorded(sft_snapshot: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    anchor = _anchor_file(tmp_path / "anchor.jsonl")
    config = TrainConfig(max_steps=2, anchor_loss="sft", **TINY)
    result = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "anchored", config, anchor_path=anchor)
    record = json.loads((result.output_dir / TRAINING_JSON).read_text())
    assert record["anchor"]["rows"] == 6 and record["anchor"]["snapshot_rows"] == len(FACTS)
    assert record["anchor"]["sha256"] == snapshot_sha256(anchor) and record["anchor"]["loss"] == "sft"
    assert record["snapshot"]["rows"] == len(FACTS) and record["metrics"]["rows"] == len(FACTS) + 6
    assert all("anchor_kl" not in entry for entry in record["loss_history"])
    bad = write_jsonl(tmp_path / "bad_anchor.jsonl", [{"messages": [{"role": "user", "content": "<|im_start|>x"}]}])
    with pytest.raises(SnapshotError):
        train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "never", TrainConfig(max_steps=1, **TINY), anchor_path=bad)
    assert not (tmp_path / "never").exists()


def test_kl_to_base_counts_answer_tokens_only() -> None:
    import torch

    from cl_assets.core.training.anchored import kl_to_base

    torch.manual_seed(0)
    base = torch.randn(1, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100]])  # logits at positions 1 and 2 predict the answer
    assert float(kl_to_base(base.clone(), base, labels)) == pytest.approx(0.0, abs=1e-6)
    moved = base.clone()
    moved[0, 0] += 5.0  # a prompt position: not counted
    moved[0, 4] += 5.0  # after the last answer token: not counted
    assert float(kl_to_base(moved, base, labels)) == pytest.approx(0.0, abs=1e-6)
    moved[0, 1, 7] += 3.0
    by_hand = torch.nn.functional.kl_div(moved[0, 1].log_softmax(-1), base[0, 1].log_softmax(-1),
                                         log_target=True, reduction="sum") / 2
    assert float(kl_to_base(moved, base, labels)) == pytest.approx(float(by_hand), rel=1e-5) and float(by_hand) > 0
    assert float(kl_to_base(moved, base, torch.full_like(labels, -100))) == 0.0


def _kl_on_anchor_prompts(tiny_model_dir: Path, adapter: Path, anchor: Path) -> float:
    """Mean KL(base || adapter) over the anchor rows' answer tokens, measured outside the trainer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cl_assets.core.training.anchored import kl_to_base

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    total = []
    for row in load_rows(anchor, "sft"):
        prompt, answer = render_row(row, tokenizer)
        ids = tokenizer(prompt + answer, return_tensors="pt").input_ids
        labels = ids.clone()
        labels[:, : len(tokenizer(prompt).input_ids)] = -100
        with torch.no_grad():
            adapted = model(ids).logits
            with model.disable_adapter():
                base = model(ids).logits
        total.append(float(kl_to_base(adapted, base, labels)))
    return sum(total) / len(total)


def test_the_kl_anchor_holds_the_adapter_to_the_base_on_anchor_prompts(
    sft_snapshot: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    anchor = _anchor_file(tmp_path / "anchor.jsonl", rows=4)
    runs = {}
    for weight in (0.0, 5.0):
        # Rank 8, the shape this bound was set for: with the default rank 32 (alpha 64) at lr 1e-2
        # the tiny model measured 0.017 held against 0.026 free (closer, but not by half).
        config = TrainConfig(epochs=3, anchor_loss="kl", anchor_weight=weight, anchor_batch_size=2, lora_layers_from=0.0,
                             lora_r=8, lora_alpha=16, **{**TINY, "learning_rate": 1e-2})
        result = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / f"kl{weight}", config, anchor_path=anchor)
        record = json.loads((result.output_dir / TRAINING_JSON).read_text())
        runs[weight] = (result, record)
        # The anchor rows are a stream beside the snapshot: steps follow the snapshot alone.
        assert record["steps"] == 3 * math.ceil(len(FACTS) / TINY["batch_size"])
        assert record["anchor"]["loss"] == "kl" and record["metrics"]["rows"] == len(FACTS)
    history = runs[5.0][1]["loss_history"]
    assert all(entry["anchor_kl"] >= 0 for entry in history) and history[-1]["anchor_kl"] > 0
    held = _kl_on_anchor_prompts(tiny_model_dir, runs[5.0][0].output_dir, anchor)
    free = _kl_on_anchor_prompts(tiny_model_dir, runs[0.0][0].output_dir, anchor)
    assert held < free / 2, (held, free)


def test_warm_start_records_the_parent_and_starts_from_its_weights(
    sft_run, sft_snapshot: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    parent = sft_run[0].output_dir
    # A learning rate this small leaves the weights where they started: the parent's.
    config = TrainConfig(max_steps=1, batch_size=2, max_length=128, learning_rate=1e-12)
    child = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "child", config, parent_adapter=parent)
    record = json.loads((child.output_dir / TRAINING_JSON).read_text())
    assert record["parent_adapter"] == str(parent.resolve())

    before = load_file(parent / "adapter_model.safetensors")
    after = load_file(child.output_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    lora_b = [key for key in before if "lora_B" in key]
    assert lora_b and any(before[key].abs().max() > 0 for key in lora_b)  # trained, not a fresh zero init
    for key, tensor in before.items():
        assert (after[key] - tensor).abs().max() < 1e-6, key


def test_kto_trains_a_loadable_adapter_from_a_labelled_snapshot(
    kto_snapshot: Path, tiny_model_dir: Path, tmp_path: Path, sft_run
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = TrainConfig(mode="kto", max_steps=2, batch_size=3, max_length=128, learning_rate=1e-4)
    fresh = train_adapter(kto_snapshot, tiny_model_dir, tmp_path / "kto", config)
    record = json.loads((fresh.output_dir / TRAINING_JSON).read_text())
    assert record["train_mode"] == "kto" and record["steps"] == 2 and math.isfinite(record["final_loss"])
    assert (record["metrics"]["desirable_rows"], record["metrics"]["undesirable_rows"]) == (4, 2)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), fresh.output_dir)

    # KTO after SFT (warm start): TRL adds a frozen "ref" copy of the parent; only "default" ships.
    warm = train_adapter(
        kto_snapshot,
        tiny_model_dir,
        tmp_path / "kto_warm",
        config.replace(max_steps=1),
        parent_adapter=sft_run[0].output_dir,
    )
    assert not (warm.output_dir / "ref").exists()
    assert (warm.output_dir / "adapter_model.safetensors").is_file()


def test_a_failure_mid_training_leaves_nothing_behind(sft_snapshot: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    def explode(event: TrainProgress) -> None:
        if event.step == 2:
            raise RuntimeError("progress sink broke")

    out = tmp_path / "adapters" / "20260101_000001"
    with pytest.raises(RuntimeError, match="progress sink broke"):
        train_adapter(sft_snapshot, tiny_model_dir, out, TrainConfig(max_steps=3, **TINY), progress=explode)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_refuses_existing_folder_changed_snapshot_and_bad_data(
    sft_snapshot: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "taken"
    existing.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        train_adapter(sft_snapshot, tiny_model_dir, existing, TrainConfig(max_steps=1))
    with pytest.raises(SnapshotError, match="it was changed"):
        train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "a", TrainConfig(max_steps=1), snapshot_sha256="0" * 64)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat("q", "a")) + "\n" + "oops\n")
    with pytest.raises(SnapshotError, match=r"bad\.jsonl:2"):
        train_adapter(bad, tiny_model_dir, tmp_path / "b", TrainConfig(max_steps=1))
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "c", TrainConfig(max_steps=1), parent_adapter=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "taken"]


def test_train_partition_trains_on_the_replay_rows_it_is_given(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`bench/learning_recipes.py` swaps the anchor set per run; the adapter's record names the rows used."""
    from cl_assets.core.cycle import curate_partition, train_partition
    from cl_assets.core.ingest import Ingestor
    from tests.conftest import REPO

    settings = make_settings(tmp_path, base_model=str(tiny_model_dir), train_max_steps=1, min_snapshot_rows=5)
    ingestor = Ingestor(settings)
    ingestor.import_jsonl(REPO / "data" / "demo" / "interactions.jsonl")
    curated = curate_partition(settings, ingestor.store, "20261120_120000")
    anchor = write_jsonl(tmp_path / "mix.jsonl", [
        {"messages": [{"role": "user", "content": f"Name {n}?"}, {"role": "assistant", "content": f"It is {n}."}]}
        for n in range(3)
    ])
    trained = train_partition(settings, ingestor.store, "20261120_120000", tiny_model_dir,
                              TrainConfig.from_settings(settings, **TINY), anchor_path=anchor)
    record = json.loads((trained.output_dir / TRAINING_JSON).read_text())
    assert record["anchor"]["path"] == str(anchor.resolve()) and record["anchor"]["rows"] == 3
    # A multi-turn line can give several training rows (one per answer that counts).
    assert record["anchor"]["snapshot_rows"] >= curated.snapshot.n_rows
    # The KL anchor (the default) keeps the anchor rows a stream of their own, beside the snapshot's.
    assert record["anchor"]["loss"] == "kl" and record["metrics"]["rows"] == record["anchor"]["snapshot_rows"]


def test_an_upper_layer_adapter_ships_its_scope_router(sft_snapshot: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cl_assets.core.scope import SCOPE_FILE, ScopeRouter

    anchor = _anchor_file(tmp_path / "anchor.jsonl")
    config = TrainConfig(max_steps=2, **TINY)  # LoRA on the upper half: layer 1 of the tiny model's 2
    result = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "scoped", config, anchor_path=anchor)
    keys = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert keys and all(".layers.1." in key for key in keys)
    router = ScopeRouter.from_bytes((result.output_dir / SCOPE_FILE).read_bytes())
    assert router.layer == 1
    assert (router.stats["inside"], router.stats["outside"]) == (len(FACTS), 6)  # snapshot users vs anchor users
    record = json.loads((result.output_dir / TRAINING_JSON).read_text())
    assert record["metrics"]["scope_layer"] == 1 and 0 <= record["metrics"]["scope_cv_recall"] <= 1

    # a warm start keeps its parent's scope: the facts the parent taught stay in the weights
    child = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "child", config, anchor_path=anchor,
                          parent_adapter=result.output_dir)
    child_router = ScopeRouter.from_bytes((child.output_dir / SCOPE_FILE).read_bytes())
    assert child_router.stats["inside"] == 2 * len(FACTS)

    # no router without out-of-scope examples, or when every layer is adapted
    plain = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "plain", config)
    full = train_adapter(sft_snapshot, tiny_model_dir, tmp_path / "full", config.replace(lora_layers_from=0.0),
                         anchor_path=anchor)
    assert not (plain.output_dir / SCOPE_FILE).exists() and not (full.output_dir / SCOPE_FILE).exists()
