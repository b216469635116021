"""Serving precision: the dtype the chat holds its weights in, and the one evaluation judges.

A decode step of one answer reads every weight once, so bf16 weights (half the bytes) can
double a CPU's tokens/s, but only where the CPU has fast bf16 kernels for one row: on the AMD
EPYC of docs/benchmarks.md a step took 17.5 ms in bf16 against 35 ms in fp32, on the Intel Xeon
before it 0.88x fp32's speed. No rule of thumb from CPU flags fits both, so `auto` measures:
a few decode steps of the loaded model in each dtype, once per CPU, torch version and model,
kept in `<models_dir>/serving_precision.json` so that every process on the machine (the chat,
the evaluation that gates it) resolves `auto` to the same dtype. bf16 changes some greedy
answers, so the evaluation gate judges the adapter in the dtype the chat serves it in.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cl_assets.core.files import atomic_write_text

if TYPE_CHECKING:
    from cl_assets.core.model.base import LoadedModel
    from cl_assets.settings import Settings

log = logging.getLogger(__name__)

Precision = Literal["auto", "float32", "bfloat16"]
PRECISION_FILE = "serving_precision.json"
# bf16 changes some answers: it is chosen only for a clear gain, not for noise.
MIN_GAIN = 1.2
_PROMPT_TOKENS = 48
_STEPS = 8


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype weights are served in, and why (measured step times where `auto` measured)."""

    dtype: str  # "float32", "bfloat16" or a CUDA half type
    reason: str
    float32_ms: float | None = None
    bfloat16_ms: float | None = None


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
    """What a measured choice holds for: CPU, torch, threads and the model's shape."""
    import torch

    config = loaded.model.config
    shape = [getattr(config, k, None) for k in ("model_type", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "vocab_size")]  # fmt: skip
    return json.dumps([cpu_name(), torch.__version__, torch.get_num_threads(), shape])


def resolve_precision(loaded: LoadedModel, choice: Precision, cache_dir: Path | None) -> PrecisionChoice:
    """The dtype `choice` means for this model on this machine (measuring once for `auto`)."""
    import torch

    if choice != "auto":
        return PrecisionChoice(choice, "set")
    if loaded.device.device != "cpu":
        return PrecisionChoice(str(loaded.device.dtype).removeprefix("torch."), f"{loaded.device.device} default")
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return PrecisionChoice("float32", "no native bf16 on this CPU")
    key = machine_key(loaded)
    path = cache_dir / PRECISION_FILE if cache_dir is not None else None
    known = _read(path)
    if key in known:
        entry = known[key]
        return PrecisionChoice(entry["dtype"], "measured earlier", entry["float32_ms"], entry["bfloat16_ms"])
    fp32_ms, bf16_ms = measure_step_ms(loaded)
    dtype = "bfloat16" if fp32_ms / bf16_ms >= MIN_GAIN else "float32"
    log.info("Serving precision on %s: %s (decode step %.1f ms in float32, %.1f ms in bfloat16)",
             cpu_name(), dtype, fp32_ms, bf16_ms)  # fmt: skip
    if path is not None:
        known[key] = {"dtype": dtype, "float32_ms": round(fp32_ms, 2), "bfloat16_ms": round(bf16_ms, 2),
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True))
    return PrecisionChoice(dtype, "measured", fp32_ms, bf16_ms)


def apply_precision(loaded: LoadedModel, choice: Precision, cache_dir: Path | None) -> PrecisionChoice:
    """Cast the loaded model to the serving dtype `choice` resolves to (before any adapter is loaded)."""
    import torch

    resolved = resolve_precision(loaded, choice, cache_dir)
    dtype = getattr(torch, resolved.dtype)
    if loaded.model.dtype != dtype:
        loaded.model.to(dtype)
    return resolved


def serving_precision(loaded: LoadedModel, settings: Settings) -> PrecisionChoice:
    """`apply_precision` with the chat's setting: what the chat serves in and evaluation judges in."""
    chosen = apply_precision(loaded, settings.chat_dtype, settings.models_dir)
    log.info("Serving precision: %s (%s)", chosen.dtype, chosen.reason)
    return chosen


def serving_adapters(settings: Settings, source: Settings | str | Path) -> Any:
    """An `AdapterSet` on the base as the chat serves it: in the serving precision, adapters
    merged into the weights when the chat merges them. Evaluation judges adapters on it, so
    the answers it scores are the ones the chat gives."""
    from cl_assets.core.model.adapters import AdapterSet
    from cl_assets.core.model.base import load_base_model

    loaded = load_base_model(source)
    serving_precision(loaded, settings)
    return AdapterSet(loaded, merge=settings.chat_merge_adapter, routing=settings.scope_routing)


def measure_step_ms(loaded: LoadedModel) -> tuple[float, float]:
    """Median time of one decode step (one row, a short KV cache) in float32 and in bfloat16.

    The bf16 copy is made from the fp32 model, so the caller's model is left as it is; the two
    are timed in turns so that a neighbour's load falls on both."""
    import torch

    model = loaded.model
    if model.dtype != torch.float32:
        raise ValueError(f"measure_step_ms needs the float32 model, not {model.dtype}")
    half = copy.deepcopy(model).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, int(model.config.vocab_size), (1, _PROMPT_TOKENS), generator=gen)
    times: dict[Any, list[float]] = {model: [], half: []}
    with torch.inference_mode():
        states = {m: m(input_ids=prompt, use_cache=True, logits_to_keep=1) for m in (model, half)}
        for step in range(_STEPS + 2):
            for m in (model, half):
                out = states[m]
                token = out.logits[:, -1:].argmax(-1)
                started = time.perf_counter()
                states[m] = m(input_ids=token, cache=out.cache, use_cache=True, logits_to_keep=1)
                if step >= 2:  # the first steps warm up allocators and kernels
                    times[m].append(time.perf_counter() - started)
    return statistics.median(times[model]) * 1000, statistics.median(times[half]) * 1000


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
    return {k: v for k, v in data.items() if isinstance(v, dict) and v.get("dtype") in ("float32", "bfloat16")
            and isinstance(v.get("float32_ms"), int | float) and isinstance(v.get("bfloat16_ms"), int | float)}
