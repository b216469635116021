"""An adapter's scope: which conversations it answers; everything else the base answers as before.

Why: a LoRA update that teaches a few dozen support facts moves the base's greedy answers on
general questions too, and many of those answers hang on a near tie (on the shipped general
set, 86 of 265 base answers pass a token whose top two choices are within 0.1 nats). Replay and
a KL anchor shrink the move but do not remove it (docs/learning.md). So, as in SERAC (Mitchell
et al., 2022, "Memory-based model editing at scale"), a small classifier decides per
conversation whether it lies in the scope of what the adapter was taught: in scope, the adapter
answers; out of scope, the base model does, unchanged.

The classifier is a logistic regression on the base model's hidden state at one layer, mean-pooled
over the tokens of a user message. In scope: the user messages of the snapshot the adapter was
trained on (and of its parent's, for a warm start). Out of scope: the anchor set's prompts, which
are general by construction (`core/anchor.py`). The layer is the first one the adapter changes,
so the feature is the same whether the adapter is merged into the weights, active or not: the
router reads the shared lower half of the network.

Written by hand because no maintained library does this over a causal LM's hidden states; the
regression itself is twenty lines of torch (L-BFGS), so scikit-learn is not worth a dependency.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SCOPE_FILE = "scope.safetensors"
_FORMAT = 1
_L2 = 1e-3  # ridge on the weights: hundreds of examples in a 576-dimensional space
_FOLDS = 5


def user_texts(messages: Sequence[Mapping[str, Any]], last: int = 2) -> list[str]:
    """The last `last` user messages of a conversation: what the scope is decided on.

    Two, so a follow-up ("And for Canada?") stays with the question it follows."""
    texts = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
    return [t for t in texts[-last:] if t.strip()]


class _Reached(Exception):
    """Raised by a forward hook to stop the forward pass at the layer the router reads."""

    def __init__(self, hidden: Any) -> None:
        self.hidden = hidden


def message_features(model: Any, tokenizer: Any, texts: Sequence[str], layer: int, *, batch_size: int = 32) -> Any:
    """Mean-pooled hidden state `layer` (0 = embeddings) of each text on its own, float32, (N, D).

    `model` is a causal LM (or a PEFT model around one). Only the layers below `layer` run: a hook
    on the last of them stops the forward pass there (half the cost of a full one at mid depth)."""
    import torch

    body = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = body.get_decoder() if hasattr(body, "get_decoder") else body
    if not 0 < layer <= len(body.layers):
        raise ValueError(f"layer must be in 1..{len(body.layers)}, got {layer}")

    def stop(module: Any, args: Any, output: Any) -> None:
        raise _Reached(output[0] if isinstance(output, tuple) else output)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(body.parameters()).device
    out = []
    handle = body.layers[layer - 1].register_forward_hook(stop)
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = [tokenizer(t, add_special_tokens=False)["input_ids"][:256] or [pad]
                         for t in texts[start:start + batch_size]]
                width = max(len(ids) for ids in chunk)
                ids = torch.tensor([row + [pad] * (width - len(row)) for row in chunk], device=device)
                mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in chunk], device=device)
                try:
                    body(input_ids=ids, attention_mask=mask, use_cache=False)
                    raise RuntimeError("the forward pass never reached the scope layer")
                except _Reached as reached:
                    hidden = reached.hidden
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * weights).sum(1) / weights.sum(1)).float().cpu())
    finally:
        handle.remove()
    return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass(frozen=True)
class ScopeRouter:
    """A fitted scope: `in_scope(features)` for messages featurised at `layer`."""

    layer: int
    mean: Any  # (D,) standardisation of the features
    scale: Any  # (D,)
    weight: Any  # (D,) logistic regression over the standardised, L2-normalised features
    bias: float
    positives: Any  # (N, D) float16 features of the in-scope messages, carried into warm-started children
    stats: dict[str, Any] = field(default_factory=dict)

    def logits(self, features: Any) -> Any:
        import torch

        z = torch.nn.functional.normalize((features - self.mean) / self.scale, dim=-1)
        return z @ self.weight + self.bias

    def in_scope(self, features: Any) -> list[bool]:
        return [bool(v > 0) for v in self.logits(features)]

    # -- files --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        import torch
        from safetensors.torch import save

        tensors = {"mean": self.mean.float().contiguous(), "scale": self.scale.float().contiguous(),
                   "weight": self.weight.float().contiguous(), "bias": torch.tensor([self.bias]),
                   "positives": self.positives.half().contiguous()}
        meta = {"format": str(_FORMAT), "layer": str(self.layer), "stats": json.dumps(self.stats, sort_keys=True)}
        return save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> ScopeRouter:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(data)
            meta = _metadata(data)
            if int(meta.get("format", "0")) != _FORMAT:
                raise ValueError(f"unknown scope format {meta.get('format')!r}")
            return cls(layer=int(meta["layer"]), mean=tensors["mean"], scale=tensors["scale"],
                       weight=tensors["weight"], bias=float(tensors["bias"][0]), positives=tensors["positives"],
                       stats=json.loads(meta.get("stats", "{}")))
        except (SafetensorError, KeyError, ValueError) as exc:
            raise ValueError(f"unreadable {SCOPE_FILE}: {exc}") from exc


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (the format: 8-byte length, JSON header, tensors)."""
    size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8:8 + size]).get("__metadata__") or {})


def _fit_logistic(x: Any, y: Any) -> tuple[Any, float]:
    """Class-balanced, ridge-regularised logistic regression by L-BFGS (deterministic)."""
    import torch

    positives = float(y.sum())
    pos_weight = torch.tensor((len(y) - positives) / max(positives, 1.0))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, pos_weight=pos_weight)
        loss = loss + _L2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), float(b.detach()[0])


def fit_scope(inside: Any, outside: Any, layer: int, *, seed: int = 0) -> ScopeRouter:
    """Fit a router from features of in-scope and out-of-scope messages (at least 2 of each).

    Its `stats` hold what a reader needs to trust it: the counts, and the share of held-out
    in-scope messages kept in (recall) and of held-out out-of-scope ones let in, by 5-fold
    cross-validation, so neither figure is measured on the rows it was fitted on."""
    import torch

    if len(inside) < 2 or len(outside) < 2:
        raise ValueError(f"a scope needs at least 2 messages on each side, got {len(inside)} in and {len(outside)} out")
    features = torch.cat([inside, outside]).float()
    labels = torch.cat([torch.ones(len(inside)), torch.zeros(len(outside))])
    mean = features.mean(0)
    scale = features.std(0) + 1e-6

    def standardise(x: Any) -> Any:
        return torch.nn.functional.normalize((x - mean) / scale, dim=-1)

    z = standardise(features)
    generator = torch.Generator().manual_seed(seed)
    fold = torch.randperm(len(z), generator=generator) % _FOLDS
    predicted = torch.zeros(len(z), dtype=torch.bool)
    for k in range(_FOLDS):
        held = fold == k
        w, b = _fit_logistic(z[~held], labels[~held])
        predicted[held] = (z[held] @ w + b) > 0
    w, b = _fit_logistic(z, labels)
    is_in = labels.bool()
    stats = {"inside": len(inside), "outside": len(outside), "cv_recall": float(predicted[is_in].float().mean()),
             "cv_false_in": float(predicted[~is_in].float().mean()), "folds": _FOLDS}
    return ScopeRouter(layer, mean, scale, w, b, inside.half(), stats)
