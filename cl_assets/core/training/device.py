"""Where and in which precision training runs, chosen from what the machine has.

One code path for all three; only model loading and the bf16 flag differ:

- CUDA and bitsandbytes importable: 4-bit QLoRA (nf4, double quantization, bf16 compute).
- CUDA without bitsandbytes: LoRA on a bf16 base model.
- CPU with native bf16 (AVX512-BF16 or AMX, as oneDNN reports it): fp32 weights with bf16
  autocast; measured 1.84x the fp32 tokens/s at the same taught accuracy (bench/training.py).
- Other CPUs: LoRA in fp32 (emulated bf16 is slower than fp32 there).

bitsandbytes is an optional `cuda` extra; it is imported only when CUDA is present, since on
CPU it adds ~0.8 s to every import and logs a warning (STACK-NOTES).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

QLORA_CUDA = "qlora-nf4-cuda"
LORA_BF16_CUDA = "lora-bf16-cuda"
LORA_FP32_CPU = "lora-fp32-cpu"
LORA_BF16_AUTOCAST_CPU = "lora-bf16-autocast-cpu"


@dataclass(frozen=True)
class Precision:
    """The training set-up: `mode` is what training.json records."""

    mode: str
    device: str  # "cuda" | "cpu"
    dtype: str  # torch dtype name of the base weights / compute
    bf16: bool
    quantize_4bit: bool

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `AutoModelForCausalLM.from_pretrained`."""
        import torch

        if self.quantize_4bit:
            from transformers import BitsAndBytesConfig

            return {
                "quantization_config": BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16,
                ),
                "dtype": torch.bfloat16,
                "device_map": {"": 0},
            }
        if self.device == "cuda":
            return {"dtype": torch.bfloat16, "device_map": {"": 0}}
        return {"dtype": torch.float32}


def _bitsandbytes_importable() -> bool:
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install means "not usable", and we say so
        log.warning("bitsandbytes is installed but does not import (%s); training LoRA in bf16 instead", exc)
        return False
    return True


def cpu_has_native_bf16() -> bool:
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def detect_precision(cpu_bf16: bool | None = None) -> Precision:
    """`cpu_bf16`: None decides by the CPU (bf16 autocast only where it is native), True/False force it."""
    import torch

    if torch.cuda.is_available():
        if _bitsandbytes_importable():
            return Precision(QLORA_CUDA, "cuda", "bfloat16", bf16=True, quantize_4bit=True)
        return Precision(LORA_BF16_CUDA, "cuda", "bfloat16", bf16=True, quantize_4bit=False)
    if cpu_bf16 if cpu_bf16 is not None else cpu_has_native_bf16():
        return Precision(LORA_BF16_AUTOCAST_CPU, "cpu", "float32", bf16=True, quantize_4bit=False)
    return Precision(LORA_FP32_CPU, "cpu", "float32", bf16=False, quantize_4bit=False)
