"""`train_adapter`: one snapshot in, one PEFT adapter folder out, written atomically.

The folder holds the `save_pretrained` adapter files, `training.json` (arguments, snapshot
hash, parent adapter, device mode, losses, token counts, timings, library versions) and
`loss_curve.png`. Everything is written into a dot-prefixed sibling first and renamed into
place at the very end, so a crash or an exception from a progress callback never leaves a
half-written adapter that the registry could pick up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cl_assets.core.files import atomic_directory
from cl_assets.core.snapshot import file_sha256
from cl_assets.core.scope import user_texts
from cl_assets.core.training.config import TrainConfig
from cl_assets.core.training.data import SnapshotError, load_rows
from cl_assets.core.training.device import Precision, detect_precision

log = logging.getLogger(__name__)

TRAINING_JSON = "training.json"
LOSS_CURVE_PNG = "loss_curve.png"
ADAPTER_CONFIG = "adapter_config.json"
_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")


@dataclass(frozen=True)
class TrainProgress:
    """One logged optimizer step, for a Dagster log line or a CLI progress bar."""

    step: int
    max_steps: int
    loss: float
    epoch: float
    tokens: int
    tokens_per_s: float
    elapsed_s: float
    learning_rate: float | None = None


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    mode: str  # device/precision mode, e.g. "lora-fp32-cpu"
    final_loss: float
    steps: int
    tokens: int
    tokens_per_s: float
    duration_s: float
    metrics: dict[str, Any] = field(default_factory=dict)


def _progress_callback_class() -> type:
    """Built lazily: `transformers` is imported only when training actually runs."""
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        """Keeps the loss history and forwards each logged step to `progress`."""

        def __init__(self, progress: Callable[[TrainProgress], None] | None) -> None:
            self.progress = progress
            self.history: list[dict[str, Any]] = []
            self.last_logs: dict[str, Any] = {}
            self.started = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if not logs or "loss" not in logs:  # the end-of-run summary has "train_loss" instead
                return
            elapsed = time.perf_counter() - self.started
            tokens = int(state.num_input_tokens_seen or 0)
            entry = {
                "step": state.global_step,
                "epoch": round(float(state.epoch or 0.0), 4),
                "loss": float(logs["loss"]),
                "learning_rate": logs.get("learning_rate"),
                "tokens": tokens,
                "elapsed_s": round(elapsed, 3),
            }
            if "anchor_kl" in logs:  # the distillation anchor's term, inside `loss` (training/anchored.py)
                entry["anchor_kl"] = float(logs["anchor_kl"])
            self.history.append(entry)
            self.last_logs = dict(logs)
            if self.progress is not None:
                self.progress(
                    TrainProgress(
                        step=state.global_step,
                        max_steps=state.max_steps,
                        loss=entry["loss"],
                        epoch=float(state.epoch or 0.0),
                        tokens=tokens,
                        tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
                        elapsed_s=elapsed,
                        learning_rate=entry["learning_rate"],
                    )
                )

    return LossRecorder


def train_adapter(
    snapshot_path: Path,
    base_model: Path | str,
    output_dir: Path,
    config: TrainConfig,
    *,
    parent_adapter: Path | None = None,
    snapshot_sha256: str | None = None,
    anchor_path: Path | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on a ChatML snapshot and write it to `output_dir` (which must not exist).

    `parent_adapter` warm-starts from an earlier adapter (loaded trainable) instead of a fresh
    LoRA; its own LoRA shape then wins over `config.lora_*`. `snapshot_sha256`, when given, must
    match the file: snapshots are immutable, so a mismatch means the wrong file. `anchor_path`
    is the base model's own answers to general prompts (`core/anchor.py`), mixed into the rows
    so the update stays local.
    """
    snapshot_path = Path(snapshot_path)
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"adapter folder {output_dir} already exists; adapters are immutable, pick a new folder")
    if parent_adapter is not None and not (Path(parent_adapter) / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(
            f"parent adapter {parent_adapter} has no {ADAPTER_CONFIG}; is it a PEFT adapter folder?"
        )

    from cl_assets.core.priority import lower_cpu_priority

    lower_cpu_priority(config.nice)  # before torch starts its worker threads here, which inherit it
    # Validate the data before paying for a model load.
    rows = load_rows(snapshot_path, config.mode, config.system_prompt)
    anchor = None
    anchor_rows: list[dict[str, Any]] = []
    outside: list[str] = []  # the anchor prompts: out of the adapter's scope by construction
    inside = sorted({text for row in rows for text in user_texts(row["prompt"], last=1_000)})
    if anchor_path is not None:
        anchor_rows = load_rows(Path(anchor_path), "sft")
        outside = sorted({text for row in anchor_rows for text in user_texts(row["prompt"], last=1_000)})
        # KTO has no KL anchor of its own kind: there the base's answers are desirable rows.
        loss = config.anchor_loss if config.mode == "sft" else "sft"
        anchor = {"path": str(Path(anchor_path).resolve()), "sha256": file_sha256(Path(anchor_path)),
                  "rows": len(anchor_rows), "snapshot_rows": len(rows), "loss": loss}
        if loss == "sft":
            if config.mode == "kto":  # the base's own answers are desirable behaviour
                anchor_rows = [{**row, "label": True} for row in anchor_rows]
            rows, anchor_rows = rows + anchor_rows, []
    actual_sha = file_sha256(snapshot_path)
    if snapshot_sha256 is not None and snapshot_sha256 != actual_sha:
        raise SnapshotError(
            f"snapshot {snapshot_path} has sha256 {actual_sha}, not the registered {snapshot_sha256}: it was changed"
        )

    # A folder that appears while we train is someone else's adapter: never replaced.
    with atomic_directory(output_dir) as staging:
        result = _train_into(
            staging,
            rows=rows,
            snapshot_path=snapshot_path,
            snapshot_sha=actual_sha,
            base_model=base_model,
            config=config,
            parent_adapter=Path(parent_adapter) if parent_adapter is not None else None,
            anchor=anchor,
            anchor_rows=anchor_rows,
            progress=progress,
            scope_texts=(inside, outside),
        )
    log.info(
        "adapter %s: %d steps, final loss %.4f, %.0f tokens/s, %.1f s (%s)",
        output_dir,
        result.steps,
        result.final_loss,
        result.tokens_per_s,
        result.duration_s,
        result.mode,
    )
    return dataclasses.replace(result, output_dir=output_dir)


def _load_model(base_model: Path | str, precision: Precision, config: TrainConfig, parent_adapter: Path | None) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model), **precision.model_kwargs())
    if precision.quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if parent_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(parent_adapter), is_trainable=True)
        parent = model.peft_config["default"]
        if (parent.r, parent.lora_alpha) != (config.lora_r, config.lora_alpha):
            log.warning(
                "warm start keeps the parent's LoRA shape (r=%s, alpha=%s), not the config's (r=%s, alpha=%s)",
                parent.r,
                parent.lora_alpha,
                config.lora_r,
                config.lora_alpha,
            )
    return model


def _build_trainer(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    config: TrainConfig,
    staging: Path,
    precision: Precision,
    peft_config: Any,
    callback: Any,
    anchor_rows: list[dict[str, Any]] | None = None,
) -> Any:
    trainer = _make_trainer(model, tokenizer, rows, config, staging, precision, peft_config, callback, anchor_rows)
    # With tqdm off, transformers adds a PrinterCallback that print()s every log dict to stdout;
    # our callback is the one progress channel (Dagster logger, CLI bar).
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _make_trainer(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    config: TrainConfig,
    staging: Path,
    precision: Precision,
    peft_config: Any,
    callback: Any,
    anchor_rows: list[dict[str, Any]] | None = None,
) -> Any:
    from datasets import Dataset

    def as_dataset(rows: list[dict[str, Any]]) -> Any:
        return Dataset.from_list([{**row, "chat_template_kwargs": {"sanitize_control_tokens": True}} for row in rows])

    # TRL renders each row with the chat template and passes `chat_template_kwargs` through:
    # control tokens typed inside a message are then encoded as plain text, as the chat does at
    # inference (`model._encode`), so no message can forge a turn of the template.
    dataset = as_dataset(rows)
    if config.mode == "kto":
        from trl import KTOTrainer

        # KTO reads rows in order (its KL term pairs batch neighbours): shuffle once, seeded,
        # so 👍 and 👎 rows mix within batches instead of following the snapshot's order.
        dataset = dataset.shuffle(seed=config.seed).flatten_indices()
        return KTOTrainer(
            model=model,
            args=config.to_kto_config(staging, precision),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
    from trl import SFTTrainer

    common = {
        "model": model,
        "args": config.to_sft_config(staging, precision),
        "data_collator": config.sft_collator(tokenizer),
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "peft_config": peft_config,
        "callbacks": [callback],
    }
    if not anchor_rows:  # no anchor set, or one mixed in as ordinary rows
        return SFTTrainer(**common)
    from cl_assets.core.training.anchored import anchored_sft_trainer_class

    return anchored_sft_trainer_class()(
        **common,
        anchor_dataset=as_dataset(anchor_rows),
        anchor_weight=config.anchor_weight,
        anchor_batch_size=config.anchor_batch_size,
    )


def _train_into(
    staging: Path,
    *,
    rows: list[dict[str, Any]],
    snapshot_path: Path,
    snapshot_sha: str,
    base_model: Path | str,
    config: TrainConfig,
    parent_adapter: Path | None,
    progress: Callable[[TrainProgress], None] | None,
    anchor: dict[str, Any] | None = None,
    anchor_rows: list[dict[str, Any]] | None = None,
    scope_texts: tuple[list[str], list[str]] = ([], []),
) -> TrainResult:
    from transformers import AutoTokenizer, set_seed

    started = time.perf_counter()
    precision = detect_precision(config.cpu_bf16)
    set_seed(config.seed)  # before the model: LoRA's A matrices are drawn at wrap time
    callback = _progress_callback_class()(progress)
    with _quiet_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(str(base_model))
        model = _load_model(base_model, precision, config, parent_adapter)
        peft_config = None if parent_adapter is not None else config.to_lora_config(model)
        trainer = _build_trainer(model, tokenizer, rows, config, staging, precision, peft_config, callback,
                                 anchor_rows or [])
    try:
        load_s = time.perf_counter() - started
        output = trainer.train()
        if not callback.history:
            raise RuntimeError("training logged no loss; nothing was trained")
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        # KTO warm starts add a frozen "ref" copy of the parent: only the trained adapter ships.
        peft_model.save_pretrained(str(staging), selected_adapters=["default"])
        state = trainer.state
        train_runtime = float(output.metrics.get("train_runtime", 0.0)) or (time.perf_counter() - started - load_s)
        tokens = int(state.num_input_tokens_seen or 0)
        steps = int(state.global_step)
        lora = peft_model.peft_config["default"].to_dict()
        scope_stats = _write_scope(peft_model, tokenizer, config, staging, scope_texts, parent_adapter)
        arguments = trainer.args.to_dict()
        arguments["output_dir"] = "<adapter folder>"  # the staging path means nothing after the rename
    finally:
        del trainer, model
        gc.collect()

    final_loss = float(callback.history[-1]["loss"])
    metrics = {
        "final_loss": final_loss,
        "train_loss": float(output.training_loss),
        "steps": steps,
        "epochs": float(state.epoch or 0.0),
        "rows": len(rows),
        "train_tokens": tokens,
        "tokens_per_s": tokens / train_runtime if train_runtime > 0 else 0.0,
        "s_per_step": train_runtime / steps if steps else 0.0,
        "train_runtime_s": train_runtime,
        "load_s": load_s,
    }
    metrics.update(
        {f"last_{key}": value for key, value in callback.last_logs.items() if key.startswith(("rewards/", "kl", "anchor_kl"))}
    )
    metrics.update({f"scope_{key}": value for key, value in (scope_stats or {}).items()})
    if config.mode == "kto":
        metrics["desirable_rows"] = sum(1 for row in rows if row["label"])
        metrics["undesirable_rows"] = len(rows) - metrics["desirable_rows"]
    _plot_loss(callback.history, staging / LOSS_CURVE_PNG, title=f"{config.mode.upper()} on {snapshot_path.name}")
    duration = time.perf_counter() - started
    metrics["duration_s"] = duration
    record = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "snapshot": {"path": str(snapshot_path.resolve()), "sha256": snapshot_sha,
                     "rows": anchor["snapshot_rows"] if anchor else len(rows)},
        "anchor": anchor,
        "base_model": str(base_model),
        "parent_adapter": str(Path(parent_adapter).resolve()) if parent_adapter is not None else None,
        "train_mode": config.mode,
        "mode": precision.mode,
        "device": precision.device,
        "dtype": precision.dtype,
        "config": config.to_dict(),
        "lora": lora,
        "training_arguments": arguments,
        "final_loss": final_loss,
        "loss_history": callback.history,
        "steps": steps,
        "train_tokens": tokens,
        "tokens_per_s": metrics["tokens_per_s"],
        "duration_s": duration,
        "metrics": metrics,
        "versions": _versions(precision),
    }
    (staging / TRAINING_JSON).write_text(json.dumps(record, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return TrainResult(
        output_dir=staging,
        mode=precision.mode,
        final_loss=final_loss,
        steps=steps,
        tokens=tokens,
        tokens_per_s=metrics["tokens_per_s"],
        duration_s=duration,
        metrics=metrics,
    )


def _write_scope(peft_model: Any, tokenizer: Any, config: TrainConfig, staging: Path,
                 texts: tuple[list[str], list[str]], parent_adapter: Path | None) -> dict[str, Any] | None:
    """Fit the adapter's scope router (`core/scope.py`) and save it beside the weights.

    In scope: the snapshot's user messages, plus the parent's in-scope messages on a warm start
    (its facts stay in the weights). None (no router: the adapter answers everything) when it is
    off, when there are no anchor prompts to stand for "out of scope", or when the adapter also
    changes the layers the router would read."""
    import torch

    from cl_assets.core.scope import SCOPE_FILE, ScopeRouter, fit_scope, message_features

    inside, outside = texts
    layers_changed = peft_model.peft_config["default"].layers_to_transform
    if not config.scope_router:
        return None
    if not layers_changed or min(layers_changed) < 1:
        log.info("no scope router: the adapter changes every layer, so no layer reads the same merged or not")
        return None
    if len(outside) < 2 or len(inside) < 2:
        log.info("no scope router: %d in-scope and %d out-of-scope messages (2 of each needed)", len(inside), len(outside))
        return None
    layer = min(layers_changed)  # the hidden state entering the first adapted layer: the base's own
    with peft_model.disable_adapter():
        features_in = message_features(peft_model, tokenizer, inside, layer)
        features_out = message_features(peft_model, tokenizer, outside, layer)
    parent_scope = Path(parent_adapter) / SCOPE_FILE if parent_adapter is not None else None
    if parent_scope is not None and parent_scope.is_file():
        parent = ScopeRouter.from_bytes(parent_scope.read_bytes())
        if parent.layer == layer:
            features_in = torch.cat([features_in, parent.positives.float()])
    router = fit_scope(features_in, features_out, layer, seed=config.seed)
    (staging / SCOPE_FILE).write_bytes(router.to_bytes())
    log.info("scope router at layer %d: %s", layer, router.stats)
    return {"layer": layer, **router.stats}


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide the load/tokenize tqdm bars (noise in Dagster logs); `progress` is the progress channel."""
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    datasets_on = datasets_logging.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets_logging.enable_progress_bar()
        if transformers_on:
            transformers_logging.enable_progress_bar()


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _versions(precision: Precision) -> dict[str, str]:
    from importlib import metadata

    names = _LIBRARIES + (("bitsandbytes",) if precision.quantize_4bit else ())
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _plot_loss(history: list[dict[str, Any]], path: Path, title: str) -> None:
    # The object API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [entry["step"] for entry in history]
    losses = [entry["loss"] for entry in history]
    axes.plot(steps, losses, marker="o" if len(steps) <= 40 else None, markersize=3, linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
