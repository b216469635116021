"""`TrainConfig`: the few knobs CL exposes for LoRA training, converted to PEFT/TRL at one boundary.

We keep our own small, frozen config instead of subclassing `TrainingArguments`: the hundred-odd
TRL fields stay an implementation detail, and the defaults that matter on a CPU box (no bf16,
no gradient checkpointing, no checkpoints, no wandb) are decided here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # heavy imports stay out of module import time
    from peft import LoraConfig
    from trl import KTOConfig, SFTConfig

    from cl_assets.core.training.device import Precision
    from cl_assets.settings import Settings

TrainMode = Literal["sft", "kto"]
TRAIN_MODES: tuple[str, ...] = ("sft", "kto")
AnchorLoss = Literal["kl", "sft"]
ANCHOR_LOSSES: tuple[str, ...] = ("kl", "sft")


@dataclass(frozen=True)
class TrainConfig:
    """How one LoRA adapter is trained on one snapshot. Every field has a default and a help text."""

    mode: TrainMode = field(
        default="sft",
        metadata={"help": "`sft`: imitate helpful answers; `kto`: learn from 👍 (label true) and 👎 (label false)."},
    )
    epochs: float = field(default=6.0, metadata={"help": "Passes over the snapshot (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps to run; -1 means use `epochs`."})
    batch_size: int = field(default=4, metadata={"help": "Conversation turns per device batch."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches accumulated into one optimizer step (effective batch = product)."}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate of the LoRA weights."})
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": "Learning-rate schedule (any `transformers` SchedulerType name)."}
    )
    warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of the steps spent warming the learning rate up linearly from 0, in [0, 1)."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the LoRA weights."})
    lora_r: int = field(default=32, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_layers_from: float = field(
        default=0.5,
        metadata={
            "help": "Share of the depth below which layers get no LoRA, in [0, 1) (0: every layer). Above 0 the "
            "adapter leaves the lower layers as the base has them, and a scope router is fitted on the hidden "
            "state entering the first adapted layer (`core/scope.py`)."
        },
    )
    scope_router: bool = field(
        default=True,
        metadata={"help": "Fit a scope router (needs anchor rows as out-of-scope examples and lora_layers_from > 0)."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: str | tuple[str, ...] = field(
        default="all-linear",
        metadata={"help": "Modules that get LoRA: `all-linear` (every linear layer but the head) or module names."},
    )
    max_length: int = field(default=512, metadata={"help": "Longest prompt+answer in tokens; longer ones are cut."})
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "SFT only: concatenate a batch's turns into one sequence, no padding (positions restart at each "
            "turn, and attention stays within it). Same batches and loss as padding, less compute."
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "SFT with padding only: batch turns of similar token length together so less compute goes into "
            "padding. KTO keeps TRL's sequential order, which its KL estimate needs."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System message put in front of conversations that have none, so training sees the context the "
            "chat serves with. None leaves conversations as they are (the chat template may add its own default)."
        },
    )
    anchor_loss: AnchorLoss = field(
        default="kl",
        metadata={
            "help": "SFT only: how anchor rows (the base's own answers) hold the adapter near the base. `kl`: a "
            "KL(base || adapter) term on their answer tokens, a batch of them each step (`training/anchored.py`); "
            "`sft`: mixed into the rows as ordinary targets."
        },
    )
    anchor_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the KL anchor term (`anchor_loss='kl'`). 0 (the default since scope routing): "
                  "general prompts go to the base, so the adapter need not be held there (docs/learning.md)."},
    )
    anchor_batch_size: int = field(default=4, metadata={"help": "Anchor rows per optimizer step (`anchor_loss='kl'`)."})
    kto_beta: float = field(default=0.1, metadata={"help": "KTO only: how far the model may move from the reference."})
    kto_desirable_weight: float = field(default=1.0, metadata={"help": "KTO only: weight of 👍 examples."})
    kto_undesirable_weight: float = field(default=1.0, metadata={"help": "KTO only: weight of 👎 examples."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, ~20-30% slower. Off on CPU."},
    )
    cpu_bf16: bool | None = field(
        default=None,
        metadata={"help": "CPU only: bf16 autocast over fp32 weights. None: on where the CPU runs bf16 natively."},
    )
    nice: int = field(
        default=10,
        metadata={"help": "CPU nice level the training thread runs at (0: unchanged), so a chat on the same machine keeps its speed."},
    )
    logging_steps: int = field(default=1, metadata={"help": "Optimizer steps between loss logs / progress calls."})
    seed: int = field(default=42, metadata={"help": "Seed of LoRA init, data order and dropout."})

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or a positive step count, got {self.max_steps}")
        if self.anchor_loss not in ANCHOR_LOSSES:
            raise ValueError(f"anchor_loss must be one of {ANCHOR_LOSSES}, got {self.anchor_loss!r}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        for name in ("batch_size", "gradient_accumulation_steps", "lora_r", "lora_alpha", "logging_steps",
                     "anchor_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.lora_layers_from < 1:
            raise ValueError(f"lora_layers_from must be in [0, 1), got {self.lora_layers_from}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice must be in [0, 19], got {self.nice}")
        if self.max_length < 16:
            raise ValueError(f"max_length must be >= 16 tokens, got {self.max_length}")
        if not self.target_modules:
            raise ValueError("target_modules must be 'all-linear' or a non-empty list of module names")
        if isinstance(self.target_modules, list):  # keep the dataclass hashable and truly frozen
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.kto_beta <= 0 or self.kto_desirable_weight <= 0 or self.kto_undesirable_weight <= 0:
            raise ValueError("kto_beta and the KTO weights must be > 0")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        """The config the platform trains with: `CL_TRAIN_*`, `CL_LEARNING_RATE`, `CL_LORA_*`, `CL_ANCHOR_*`, `CL_SEED`."""
        values: dict[str, Any] = {
            "mode": settings.train_mode,
            "epochs": settings.train_epochs,
            "max_steps": settings.train_max_steps,
            "batch_size": settings.train_batch_size,
            "learning_rate": settings.learning_rate,
            "lora_r": settings.lora_r,
            "lora_alpha": settings.lora_alpha,
            "lora_layers_from": settings.lora_layers_from,
            "scope_router": settings.scope_routing,
            "max_length": settings.train_max_length,
            "seed": settings.seed,
            "cpu_bf16": settings.train_cpu_bf16,
            "nice": settings.train_nice,
            "anchor_loss": settings.anchor_loss,
            "anchor_weight": settings.anchor_weight,
            # Conversations stored without a system message (flat imports) were answered under the
            # chat's; training them under the template's default taught the facts in a context the
            # chat never serves, and the anchor, which runs under the chat's, held that context back.
            "system_prompt": settings.system_prompt,
        }
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        if isinstance(values["target_modules"], tuple):
            values["target_modules"] = list(values["target_modules"])
        return values

    # -- the one boundary to PEFT / TRL ---------------------------------------------------------

    def first_lora_layer(self, num_layers: int) -> int:
        """Index of the lowest decoder layer that gets LoRA (0: all of them)."""
        return min(round(num_layers * self.lora_layers_from), num_layers - 1)

    def to_lora_config(self, model: Any = None) -> LoraConfig:
        """PEFT's config; `model` (the base) is needed when `lora_layers_from` > 0, to count its layers
        and, for `all-linear`, to name its linear modules (PEFT takes a layer list only with names)."""
        from peft import LoraConfig

        targets: Any = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        layers = None
        if self.lora_layers_from > 0:
            if model is None:
                raise ValueError("to_lora_config needs the model when lora_layers_from > 0")
            num_layers = model.config.num_hidden_layers
            layers = list(range(self.first_lora_layer(num_layers), num_layers))
            if targets == "all-linear":
                import torch

                targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                  if isinstance(module, torch.nn.Linear) and ".layers." in name})
            elif isinstance(targets, str):
                raise ValueError("lora_layers_from > 0 needs module names (or all-linear), not a regex")
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            layers_to_transform=layers,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def _common_args(self, output_dir: Path, precision: Precision | None) -> dict[str, Any]:
        from cl_assets.core.training.device import detect_precision

        precision = precision or detect_precision(self.cpu_bf16)
        return {
            "output_dir": str(output_dir),
            "num_train_epochs": self.epochs,
            "max_steps": self.max_steps,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "learning_rate": self.learning_rate,
            "lr_scheduler_type": self.lr_scheduler_type,
            "warmup_steps": self.warmup_ratio,  # a float < 1 is a ratio of the total steps
            "weight_decay": self.weight_decay,
            "max_length": self.max_length,
            "seed": self.seed,
            "data_seed": self.seed,
            # Precision follows the device: fp32 on CPU (TRL's bf16 default fails there), bf16 on CUDA.
            "bf16": precision.bf16,
            "fp16": False,
            "use_cpu": precision.device == "cpu",
            **_checkpointing_arg(self.gradient_checkpointing),
            # Logging feeds the progress callback and the loss curve; nothing goes to wandb & co.
            "logging_strategy": "steps",
            "logging_steps": self.logging_steps,
            "logging_first_step": True,
            "report_to": "none",
            "disable_tqdm": True,
            # One adapter is written at the very end by `train_adapter`; no mid-run checkpoints.
            "save_strategy": "no",
            "eval_strategy": "no",
            # Real (non-pad) tokens, for tokens/s and the record.
            "include_num_input_tokens_seen": "non_padding",
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": precision.device == "cuda",
        }

    def to_sft_config(self, output_dir: Path, precision: Precision | None = None) -> SFTConfig:
        from trl import SFTConfig

        return SFTConfig(
            **self._common_args(output_dir, precision),
            # Rows are prompt/completion: the loss covers the assistant answer only. On the
            # conversational `messages` format SmolLM2 learned 0/10 facts (see STACK-NOTES).
            completion_only_loss=True,
            # No packing: it would put several turns in one row, so fewer, bigger optimizer steps than
            # the learning rate was tuned for. Padding-free batches keep the batches and drop the padding;
            # `train_adapter` passes TRL's padding-free collator itself (see `sft_collator`), since TRL's
            # own `padding_free=True` refuses a `max_length` without packing although it truncates to it.
            packing=False,
            padding_free=False,
            train_sampling_strategy="group_by_length" if self.group_by_length and not self.padding_free else "random",
        )

    def sft_collator(self, tokenizer: Any) -> Any:
        """TRL's padding-free collator when `padding_free` (else None: TRL's padded default).

        It concatenates the turns and restarts `position_ids` at each; transformers reads those
        boundaries into a block-diagonal causal mask for SDPA and eager attention too (not only
        FlashAttention), so no turn attends to another (tests/core/test_training.py checks the
        loss equals the padded batch's)."""
        if not self.padding_free:
            return None
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)

    def to_kto_config(self, output_dir: Path, precision: Precision | None = None) -> KTOConfig:
        from trl import KTOConfig

        return KTOConfig(
            **self._common_args(output_dir, precision),
            beta=self.kto_beta,
            desirable_weight=self.kto_desirable_weight,
            undesirable_weight=self.kto_undesirable_weight,
            # KTOConfig's default "sequential" sampling stays: its KL term pairs neighbours in a batch.
        )


def _checkpointing_arg(enabled: bool) -> dict[str, bool]:
    """transformers 5.2x renamed `gradient_checkpointing` (TRL's default: on) to `activation_checkpointing`."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}
