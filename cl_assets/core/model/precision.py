"""Serving precision: how the chat holds its weights, and how evaluation judges adapters.

A decode step of one answer reads every weight once (82 % of a bf16 step is `aten::mm` on the
EPYC of docs/benchmarks.md), so fewer bytes per weight is more tokens/s, but only where the CPU
has fast kernels for them: bf16 weights ran a step 1.9x faster than fp32 on that EPYC and 0.88x
on an Intel Xeon before it. So `auto` measures: a few decode steps of the loaded model in each
precision this CPU supports, once per CPU, torch version and model shape, kept in
`<models_dir>/serving_precision.json` so that every process on the machine (the chat, and the
evaluation that gates it) resolves `auto` alike. Anything but fp32 is taken only for a clear
gain (`MIN_GAIN`), since it changes some greedy answers; the gate judges adapters in the
precision the chat serves them in, so what it passed is what answers.

- `float32`: the weights as converted.
- `bfloat16`: weights and compute in bf16.
- `int4`: the decoder's linear weights in int4 on the GGUF's own Q4_1 grid (`quantized`),
  bf16 compute; the LM head and norms in bf16; adapters beside the int4 product, unmerged.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cl_assets.core.files import atomic_write_text
from cl_assets.core.model.base import file_lock

if TYPE_CHECKING:
    from cl_assets.core.model.base import LoadedModel
    from cl_assets.settings import Settings

log = logging.getLogger(__name__)

Precision = Literal["auto", "float32", "bfloat16", "int4"]
MEASURED = ("float32", "bfloat16", "int4")  # what `auto` chooses from
PRECISION_FILE = "serving_precision.json"
# Anything but fp32 changes some answers: it is chosen only for a clear gain, not for noise.
MIN_GAIN = 1.2
_PROMPT_TOKENS = 48
_STEPS = 8


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision weights are served in, and why (step times where `auto` measured them)."""

    name: str  # "float32", "bfloat16", "int4", or a CUDA half type
    reason: str
    step_ms: dict[str, float] = field(default_factory=dict)


def cpu_name() -> str:
    """The CPU's model name (what decides its kernels), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(loaded: LoadedModel) -> str:
    """What a measured choice holds for: the CPU, torch and the model's shape (not the thread
    count, which a process may set: the chat and its evaluation must resolve alike)."""
    import torch

    config = loaded.model.config
    shape = [getattr(config, k, None) for k in ("model_type", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "vocab_size")]  # fmt: skip
    return json.dumps([cpu_name(), torch.__version__, shape])


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (without it bf16 and int4 are emulated, slowly)."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def precision_of(model: Any) -> str:
    """The precision a model is held in: `int4` when its linear layers are, else its dtype."""
    from cl_assets.core.model.quantized import Int4Linear

    if any(isinstance(m, Int4Linear) for m in model.modules()):
        return "int4"
    return str(model.dtype).removeprefix("torch.")


def resolve_precision(loaded: LoadedModel, choice: Precision, cache_dir: Path | None) -> PrecisionChoice:
    """The precision `choice` means for this model on this machine (measuring once for `auto`)."""
    if choice != "auto":
        return PrecisionChoice(choice, "set")
    if loaded.device.device != "cpu":
        return PrecisionChoice(str(loaded.device.dtype).removeprefix("torch."), f"{loaded.device.device} default")
    if not native_bf16():
        return PrecisionChoice("float32", "no native bf16 on this CPU")
    key = machine_key(loaded)
    path = cache_dir / PRECISION_FILE if cache_dir is not None else None
    if path is None:
        return _measure_and_keep(loaded, key, {}, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A second process starting now (the chat beside an evaluation) waits for this verdict
    # instead of measuring one of its own, which noise could make differ.
    with file_lock(path.with_name(path.name + ".lock")):
        known = _read(path)
        if key in known:
            return PrecisionChoice(known[key]["precision"], "measured earlier", known[key]["step_ms"])
        return _measure_and_keep(loaded, key, known, path)


def _measure_and_keep(loaded: LoadedModel, key: str, known: dict[str, Any], path: Path | None) -> PrecisionChoice:
    step_ms = measure_step_ms(loaded)
    fastest = min(step_ms, key=step_ms.__getitem__)
    name = fastest if step_ms["float32"] / step_ms[fastest] >= MIN_GAIN else "float32"
    log.info("Serving precision on %s: %s (decode step ms: %s)", cpu_name(), name,
             ", ".join(f"{k} {v:.1f}" for k, v in step_ms.items()))  # fmt: skip
    if path is not None:
        known[key] = {"precision": name, "step_ms": {k: round(v, 2) for k, v in step_ms.items()},
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True))
    return PrecisionChoice(name, "measured", step_ms)


def convert(model: Any, name: str) -> None:
    """Put a float32 model into precision `name`, in place."""
    import torch

    if name == "int4":
        from cl_assets.core.model.quantized import quantize_model_int4

        if model.dtype != torch.float32:
            raise ValueError(f"int4 is quantized from the float32 weights, not from {model.dtype}")
        quantize_model_int4(model)
        model.to(torch.bfloat16)
    else:
        model.to(getattr(torch, name))


def apply_precision(loaded: LoadedModel, choice: Precision, cache_dir: Path | None) -> PrecisionChoice:
    """Convert the loaded model to the precision `choice` resolves to (before any adapter is loaded)."""
    from cl_assets.core.model.base import ModelError

    resolved = resolve_precision(loaded, choice, cache_dir)
    if resolved.name == "int4" and loaded.device.device != "cpu":
        raise ModelError("int4 serving uses a CPU kernel; on a GPU set CL_CHAT_DTYPE to auto or bfloat16")
    if resolved.name != precision_of(loaded.model):
        convert(loaded.model, resolved.name)
    return resolved


def serving_precision(loaded: LoadedModel, settings: Settings) -> PrecisionChoice:
    """`apply_precision` with the chat's setting: what the chat serves in and evaluation judges in."""
    chosen = apply_precision(loaded, settings.chat_dtype, settings.models_dir)
    log.info("Serving precision: %s (%s)", chosen.name, chosen.reason)
    return chosen


def serving_adapters(settings: Settings, source: Settings | str | Path) -> Any:
    """An `AdapterSet` on the base as the chat serves it: in the serving precision, adapters
    merged into the weights (or beside int4 ones) when the chat merges them. Evaluation judges
    adapters on it, so the answers it scores are the ones the chat gives."""
    from cl_assets.core.model.adapters import AdapterSet
    from cl_assets.core.model.base import load_base_model

    loaded = load_base_model(source)
    serving_precision(loaded, settings)
    return AdapterSet(loaded, merge=settings.chat_merge_adapter, routing=settings.scope_routing)


def measure_step_ms(loaded: LoadedModel, names: tuple[str, ...] = MEASURED) -> dict[str, float]:
    """Median time of one decode step (one row, a short KV cache) in each precision of `names`.

    Each is timed on a copy converted from the float32 model, which is left as it was; the
    copies are timed in turns so that a neighbour's load falls on all of them alike."""
    import torch

    model = loaded.model
    if model.dtype != torch.float32 or precision_of(model) != "float32":
        raise ValueError(f"measure_step_ms needs the float32 model, not {precision_of(model)}")
    copies = {}
    for name in names:
        copies[name] = model if name == "float32" else copy.deepcopy(model)
        if name != "float32":
            convert(copies[name], name)
    prompt = torch.randint(0, int(model.config.vocab_size), (1, _PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        states = {name: m(input_ids=prompt, use_cache=True, logits_to_keep=1) for name, m in copies.items()}
        for step in range(_STEPS + 2):
            for name, m in copies.items():
                out = states[name]
                token = out.logits[:, -1:].argmax(-1)
                started = time.perf_counter()
                states[name] = m(input_ids=token, cache=out.cache, use_cache=True, logits_to_keep=1)
                if step >= 2:  # the first steps warm up allocators and kernels
                    times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def _read(path: Path | None) -> dict[str, Any]:
    """Earlier measurements; an unreadable file counts as none (it is rewritten on the next)."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("Ignoring %s (%s); measuring again", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and v.get("precision") in MEASURED
            and isinstance(v.get("step_ms"), dict)}  # fmt: skip
