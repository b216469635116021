"""One settings object for the whole of CL, read from `CL_*` environment variables or `.env`.

Paths default under the project folder (the one holding `pyproject.toml`), so the CLI, the
Dagster UI and the chat all see the same data no matter where they were started from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _project_root() -> Path:
    """The checkout that holds this package, else the working directory (installed wheel)."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


EMBEDDED_BASE_MODEL = "smollm2-135m-instruct"


class Settings(BaseSettings):
    """Every knob of CL. Field docs double as the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="CL_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=_project_root, description="Project folder; data/ and logs/ live under it.")
    data_dir: Path | None = Field(None, description="Data folder (default: `<home>/data`).")
    logs_dir: Path | None = Field(None, description="Log folder (default: `<home>/logs`).")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL (default: SQLite file `<data_dir>/cl.db`; or `postgresql+psycopg://…`)."
    )
    user_hash_salt: SecretStr | None = Field(
        None, description="HMAC key for user ids. Unset: generated once into `<data_dir>/.user_hash_salt` (0600)."
    )
    base_model: str = Field(
        EMBEDDED_BASE_MODEL,
        description="Base model: the embedded SmolLM2-135M-Instruct (default), a local folder or a Hugging Face id.",
    )
    max_message_chars: int = Field(8_000, gt=0, description="Longest prompt or response accepted, in characters.")
    max_import_line_bytes: int = Field(1_000_000, gt=0, description="Longest JSONL line `cl ingest` accepts.")
    max_conversation_messages: int = Field(
        200, gt=1, description="Most messages one stored conversation may have, system prompt and answer included."
    )

    # curation
    min_chars: int = Field(2, ge=0, description="Curation drops turns whose prompt or response is shorter.")
    max_chars: int = Field(4_000, gt=0, description="Curation drops turns whose prompt plus response is longer.")
    max_rows_per_user: int = Field(40, gt=0, description="Curation keeps at most this many turns per user.")
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="MinHash Jaccard above which turns are near-duplicates.")
    replay_fraction: float = Field(0.0, ge=0, le=1, description="Share of rows replayed from earlier untainted snapshots.")
    supersede_answers: bool = Field(
        True, description="A question rated 👍 since the previous snapshot drops the older answers to it from the next one (changed facts)."
    )
    min_snapshot_rows: int = Field(10, ge=1, description="A snapshot with fewer rows fails its quality check.")
    qa_taught_file: Path | None = Field(
        None, description="Taught-facts QA set the evaluation asks (default: `data/qa_eval.jsonl`; `cl demo --second-batch` uses the demo's second one)."
    )

    # training
    train_mode: Literal["sft", "kto"] = Field("sft", description="`sft` on helpful turns, or `kto` on 👍/👎.")
    train_epochs: float = Field(6.0, gt=0, description="Epochs over a snapshot.")
    train_max_steps: int = Field(-1, description="Cap on optimizer steps (-1: use epochs).")
    train_batch_size: int = Field(4, gt=0, description="Per-device batch size.")
    learning_rate: float = Field(1e-3, gt=0, description="LoRA learning rate.")
    lora_r: int = Field(32, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(64, gt=0, description="LoRA alpha.")
    lora_layers_from: float = Field(
        0.5, ge=0, lt=1, description="Share of the depth below which layers get no LoRA (0: every layer); the scope router reads the hidden state there."
    )
    scope_routing: bool = Field(
        True, description="Fit a scope router with each adapter and let the base answer conversations outside the adapter's scope (chat, API and evaluation)."
    )
    train_max_length: int = Field(512, gt=0, description="Longest training sequence in tokens; curation trims a longer conversation from the front to fit (3 characters a token).")
    train_cpu_bf16: bool | None = Field(
        None, description="bf16 autocast when training on a CPU (unset: on where the CPU runs bf16 natively)."
    )
    train_nice: int = Field(10, ge=0, le=19, description="CPU nice level of training (0: unchanged), below the chat's.")
    anchor_rows: int = Field(
        160, ge=0, description="Base-model answers to self-synthesized (Magpie) general prompts in the anchor set of every training run (0: no anchor set)."
    )
    anchor_factual_per_kind: int = Field(
        50, ge=0, description="Base-model answers to factual questions from package data in the anchor set, per kind (six kinds the general evaluation set does not ask)."
    )
    anchor_loss: Literal["kl", "sft"] = Field(
        "kl", description="How anchor rows hold the adapter near the base: `kl` adds KL(base ‖ adapter) on their answer tokens each step; `sft` mixes them in as ordinary targets."
    )
    anchor_weight: float = Field(
        0.0, ge=0, description="Weight of the KL anchor term (`CL_ANCHOR_LOSS=kl`); 0: the anchor prompts only fit the scope router."
    )
    warm_start: bool = Field(True, description="Start training from the deployed adapter when there is one.")
    seed: int = Field(42, description="Seed for curation sampling and training.")

    # evaluation and gates
    eval_max_new_tokens: int = Field(48, gt=0, description="Greedy tokens per evaluation answer.")
    gate_tolerance: float = Field(0.0, ge=0, le=1, description="Candidate accuracy may be this far below the deployed one.")
    gate_max_lost_items: int = Field(1, ge=0, description="Most items the deployed adapter got right that a candidate may lose.")
    gate_max_forgetting: float = Field(
        0.02, ge=0, le=1, description="Largest allowed net drop (lost minus gained items) on the general set vs the base."
    )
    gate_forgetting_alpha: float = Field(
        0.05, gt=0, le=1, description="Fail when general-set losses beat gains at this one-sided McNemar significance."
    )
    gate_max_drift: float = Field(
        0.25, ge=0, description="Largest mean extra NLL (nats/token) of the base's general answers under a candidate."
    )
    eval_batch_size: int = Field(16, gt=0, description="General-set questions answered per forward pass in evaluation.")

    # sensors
    retrain_min_feedback: int = Field(50, ge=1, description="Feedback events since the last snapshot that trigger a cycle.")
    sensor_interval_s: int = Field(60, ge=5, description="Seconds between sensor ticks.")
    quality_min_ratings: int = Field(20, ge=1, description="Ratings needed before the quality sensor judges an adapter.")
    quality_drop_margin: float = Field(0.15, gt=0, le=1, description="Helpful-rate drop vs the previous adapter that fires.")
    quality_action: Literal["alert", "rollback"] = Field("alert", description="On a quality drop: alert only or roll back.")

    # chat
    chat_host: str = Field("127.0.0.1", description="Address the chat binds to.")
    chat_port: int = Field(7860, description="Chat port.")
    chat_auth: SecretStr | None = Field(None, description="`user:password` turns on Gradio auth.")
    system_prompt: str = Field(
        "You are the support assistant of Harbor & Pine Provisions. Answer briefly and precisely.",
        description="System prompt of the chat.",
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the chat (0: greedy).")
    max_new_tokens: int = Field(128, gt=0, description="Longest chat answer in tokens.")
    knowledge_in_prompt: bool = Field(False, description="Put the top knowledge facts into the system prompt.")
    chat_batching: bool = Field(True, description="Batch concurrent chat answers for the same adapter into shared forward passes (continuous batching).")
    chat_max_batch: int = Field(8, gt=0, description="Most answers decoded together in one batch.")
    chat_attention: Literal["eager", "sdpa"] = Field(
        "sdpa", description="Attention kernel of the chat model (`sdpa`: as fast as `eager` for one answer on a CPU, 14 % faster steps at 8 batched rows, and faster beside a training run)."
    )
    chat_dtype: Literal["auto", "float32", "bfloat16", "int4"] = Field(
        "auto",
        description="Serving precision: how the chat holds its weights, and the precision evaluation judges adapters in. `int4`: the decoder's linear weights in int4 on the GGUF's Q4_1 grid, bf16 compute (CPU only); `auto` times a few decode steps in float32, bfloat16 and int4 on first use and takes the fastest where it is at least 1.2x float32 (kept per CPU in `<models_dir>/serving_precision.json`), float32 on CPUs without native bf16.",
    )
    chat_merge_adapter: bool = Field(
        True, description="Serve the deployed adapter merged into the base weights (the base is restored exactly on a swap)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="Bearer key every `/v1` API call must send; unset: the API answers loopback clients only.",
    )
    api_max_body_bytes: int = Field(1_000_000, gt=0, description="Largest `/v1` request body accepted (413 above).")

    @model_validator(mode="after")
    def _fill_paths(self) -> "Settings":
        self.home = self.home.resolve()
        self.data_dir = (self.data_dir or self.home / "data").resolve()
        self.logs_dir = (self.logs_dir or self.home / "logs").resolve()
        return self

    # Derived locations: one definition each, so no module builds a path by hand.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'cl.db'}"

    @property
    def salt_file(self) -> Path:
        return self.data_dir / ".user_hash_salt"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def curated_dir(self) -> Path:
        return self.data_dir / "curated"

    @property
    def eval_dir(self) -> Path:
        return self.data_dir / "eval"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def raw_export_path(self) -> Path:
        return self.data_dir / "ingestion" / "raw_interactions.jsonl"

    @property
    def knowledge_path(self) -> Path:
        return self.data_dir / "knowledge" / "knowledge.json"

    @property
    def registry_json_path(self) -> Path:
        return self.data_dir / "registry.json"

    def shipped(self, relative: str) -> Path:
        """A shipped input under the data folder, else the copy in the checkout's data/."""
        own = self.data_dir / relative
        return own if own.exists() else _project_root() / "data" / relative

    @property
    def qa_eval_path(self) -> Path:
        """Taught-facts QA set this data folder owns; readers use `shipped("qa_eval.jsonl")`."""
        return self.data_dir / "qa_eval.jsonl"

    @property
    def qa_general_path(self) -> Path:
        """General-knowledge QA set this data folder owns; readers use `shipped("qa_general.jsonl")`."""
        return self.data_dir / "qa_general.jsonl"

    @property
    def taught_qa_path(self) -> Path:
        """The taught-facts QA set evaluation asks: `CL_QA_TAUGHT_FILE`, else the shipped one."""
        return self.qa_taught_file or self.shipped("qa_eval.jsonl")

    @property
    def demo_path(self) -> Path:
        return self.shipped("demo/interactions.jsonl")

    @property
    def demo_second_path(self) -> Path:
        """The demo's second month: new and changed facts (`cl demo --second-batch`)."""
        return self.shipped("demo/interactions_2.jsonl")

    @property
    def demo_second_qa_path(self) -> Path:
        """The taught set after the demo's second month (kept, changed and new facts)."""
        return self.shipped("demo/qa_eval_2.jsonl")

    @property
    def learning_events_path(self) -> Path:
        return self.logs_dir / "learning_events.jsonl"

    @property
    def generation_metrics_path(self) -> Path:
        return self.logs_dir / "generation_metrics.jsonl"

    @property
    def feedback_metrics_path(self) -> Path:
        return self.logs_dir / "feedback_metrics.json"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / ".dagster_home")


def get_settings(**overrides: object) -> Settings:
    """A fresh Settings (environment read now, not at import time)."""
    return Settings(**overrides)  # type: ignore[arg-type]
