"""LoRA adapters: read and verify their files, and serve several on one base model, switched in place."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cl_assets.core.model.base import LoadedModel, Message, ModelError
from cl_assets.core.model.generation import GenerationResult, GenerationStream, _as_set
from cl_assets.core.scope import SCOPE_FILE, ScopeRouter, message_features, user_texts

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

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
    scope: ScopeRouter | None = None  # which conversations it answers (`core/scope.py`); None: all

    @property
    def lowest_layer(self) -> int:
        """The lowest decoder layer the adapter changes (0 when it names no layers: all of them)."""
        return _lowest_layer(self.config)

    @classmethod
    def read(cls, path: str | Path) -> AdapterWeights:
        """Read a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`)."""
        path = Path(path)
        files = {}
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SCOPE_FILE):
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
        scope = None
        if SCOPE_FILE in files:
            try:
                scope = ScopeRouter.from_bytes(files[SCOPE_FILE])
            except ValueError as exc:
                raise ModelError(f"{source}: {exc}") from exc
            if scope.layer > _lowest_layer(config):
                raise ModelError(f"{source}: its scope reads layer {scope.layer}, which the adapter itself changes.")
        return cls(config, tensors, source, scope)

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


def _lowest_layer(config: Any) -> int:
    layers = getattr(config, "layers_to_transform", None)
    if isinstance(layers, int):
        return layers
    return min(layers) if layers else 0


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
    modules: list[tuple[str, Any]] = field(default_factory=list)  # (name, LoraLayer) holding this slot


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

    `merge=True` (the chat): the active adapter is merged into the base linear weights
    (`W = W0 + scale·B@A`, PEFT's own `get_delta_weight`) and the LoRA layers are disabled, so
    a token costs what the base model's does. Switching writes `W0 + delta` of the next adapter
    from a pristine copy of each touched `W0` (kept from the first merge: one more copy of the
    adapted weights in memory, ~430 MB for SmolLM2 all-linear), never `W - delta`, so the base
    comes back bit for bit. Int4 base layers (`quantized.Int4Linear`) are not rewritten: the
    adapter's A and B are set beside the int4 product, and cleared to restore the base.
    `batching=True`: `stream_generate` queues to a `BatchScheduler` that batches concurrent
    answers for the same adapter (`max_batch` rows at most).
    """

    base: LoadedModel
    merge: bool = False
    batching: bool = False
    max_batch: int = 8
    routing: bool = True  # honour adapters' scope routers (`scope`); False: an adapter answers everything
    _peft: PeftModel | None = field(default=None, init=False, repr=False)
    _paths: dict[str, Path] = field(default_factory=dict, init=False)
    _weights: dict[str, AdapterWeights] = field(default_factory=dict, init=False, repr=False)
    _slots: dict[tuple[Any, ...], _Slot] = field(default_factory=dict, init=False, repr=False)
    _active: str | None = field(default=None, init=False)
    _peft_adapter: str | None = field(default=None, init=False)  # the slot PEFT runs
    _layers_enabled: bool = field(default=True, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _waiting: int = field(default=0, init=False, repr=False)  # threads queued for the lock (not the scheduler)
    _pristine: dict[str, Any] = field(default_factory=dict, init=False, repr=False)  # module -> W0
    _merged: dict[str, Any] = field(default_factory=dict, init=False, repr=False)  # module -> its weight, now W0 + delta
    _merged_id: str | None = field(default=None, init=False)
    _scheduler: Any = field(default=None, init=False, repr=False)
    _scheduler_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The lock, counted while waited for, so a batching turn ends to let the waiter in."""
        self._waiting += 1  # a racy count is fine: it only shortens a batching turn
        try:
            self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

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
        with self._exclusive():
            if self._already_loaded(adapter_id, path):
                return
        started = time.perf_counter()
        if weights is None:
            weights = AdapterWeights.read(path)  # outside the lock: an answer in flight goes on
        with self._exclusive():
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
        from peft.tuners.lora import LoraLayer

        modules = [(n, m) for n, m in self._peft.named_modules() if isinstance(m, LoraLayer) and name in m.lora_A]
        return _Slot(name, keys, slot_params, modules=modules)

    def _drop_slot(self, name: str) -> None:
        assert self._peft is not None
        if len(self._peft.peft_config) <= 1:
            self._unmerge(keep=())  # the base object goes back as it came
            self._peft.unload()  # PEFT cannot run with zero adapters: the base object is left as it was
            self._peft = None
            self._layers_enabled = True
        else:
            self._peft.delete_adapter(name)
        self._peft_adapter = None

    def activate(self, adapter_id: str | None) -> None:
        """Serve `adapter_id` (which must be loaded), or the plain base model for None."""
        with self._exclusive():
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
        slot = None if adapter_id is None else self._slots[self._weights[adapter_id].slot_signature]
        if slot is not None:
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
                changed = True
        enabled = slot is not None and not self.merge  # merged: the base layers carry the adapter
        if enabled != self._layers_enabled or changed:
            if enabled:
                lora.enable_adapter_layers()
            else:
                lora.disable_adapter_layers()
            self._layers_enabled = enabled
        if self.merge:
            self._merge(adapter_id, slot)

    def _merge(self, adapter_id: str | None, slot: _Slot | None) -> None:
        """Make the base weights `W0 + delta(adapter_id)` (just `W0` for None)."""
        if adapter_id == self._merged_id and (slot is None or slot.owner == adapter_id):
            return
        import torch

        modules = slot.modules if slot is not None else []
        self._unmerge(keep={name for name, _ in modules})
        with torch.no_grad():
            for name, module in modules:
                base_layer = module.get_base_layer()
                if getattr(base_layer, "set_delta", None) is not None:  # int4 weights: the adapter runs beside them
                    assert slot is not None
                    base_layer.set_delta(module.lora_A[slot.name].weight, module.lora_B[slot.name].weight,
                                         module.scaling[slot.name])  # fmt: skip
                    self._merged[name] = base_layer
                    continue
                weight = base_layer.weight
                if name not in self._pristine:
                    self._pristine[name] = weight.detach().clone()
                delta = module.get_delta_weight(slot.name)  # type: ignore[union-attr]
                # bf16 weights, fp32 LoRA: the sum is computed in fp32 and rounded once into the
                # bf16 weight (a delta cast to bf16 first would lose its low bits).
                torch.add(self._pristine[name], delta, out=weight.data)
                self._merged[name] = weight
        self._merged_id = adapter_id

    def _unmerge(self, keep: Any) -> None:
        """Copy `W0` back into every merged weight not named in `keep`."""
        import torch

        with torch.no_grad():
            for name in [n for n in self._merged if n not in keep]:
                merged = self._merged.pop(name)
                if getattr(merged, "clear_delta", None) is not None:
                    merged.clear_delta()
                else:
                    merged.data.copy_(self._pristine[name])
        if not self._merged:
            self._merged_id = None

    def unload(self, adapter_id: str) -> None:
        """Forget an adapter's weights. The active adapter cannot be unloaded."""
        with self._exclusive():
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

    def scope(self, adapter_id: str | None) -> ScopeRouter | None:
        """The loaded adapter's scope router (None: it answers every conversation, as with routing off)."""
        weights = self._weights.get(adapter_id) if adapter_id is not None and self.routing else None
        return weights.scope if weights is not None else None

    def in_scope(self, adapter_id: str, conversations: Sequence[Sequence[Message]]) -> list[bool]:
        """For each conversation, whether `adapter_id` answers it (True throughout without a scope).

        Decided on its last two user messages (`scope.user_texts`): either in scope is enough.
        The features come from layers the adapter never changes; if the adapter active now
        does change them (an older, full-depth adapter), the base is switched in first."""
        router = self.scope(adapter_id)
        texts = [user_texts(messages) for messages in conversations]
        if router is None:
            return [True] * len(conversations)
        flat = [text for group in texts for text in group]
        if not flat:
            return [True] * len(conversations)
        with self._exclusive():
            active = self._weights.get(self._active) if self._active is not None else None
            if active is not None and active.lowest_layer < router.layer:
                self.activate(None)
            verdicts = router.in_scope(message_features(self.base.model, self.tokenizer, flat, router.layer))
        answers, at = [], 0
        for group in texts:
            answers.append(not group or any(verdicts[at:at + len(group)]))
            at += len(group)
        return answers

    def route(self, adapter_id: str | None, messages: Sequence[Message]) -> str | None:
        """Who answers `messages` when `adapter_id` is asked for: the adapter, or None (the base
        model, as it always answered) when the conversation lies outside the adapter's scope."""
        if adapter_id is None or self.scope(adapter_id) is None:
            return adapter_id
        return adapter_id if self.in_scope(adapter_id, [messages])[0] else None

    @contextlib.contextmanager
    def using(self, adapter_id: str | None) -> Iterator[Any]:
        """Activate `adapter_id` and hold the lock; yields the model to run.

        Acquire and leave it in one thread (it is an RLock); for streaming use
        `stream_generate`, which does that inside its worker thread.
        """
        with self._exclusive():
            self.activate(adapter_id)
            yield self.model

    @contextlib.contextmanager
    def _turn(self, adapter_id: str | None) -> Iterator[Any]:
        # The scheduler's turn: the lock, not counted as a waiter; yields the base model with
        # the LoRA layers injected in place (PeftModel's wrapper adds nothing for plain LoRA).
        with self._lock:
            if adapter_id is not None and adapter_id not in self._paths:
                raise ModelError(f"Adapter {adapter_id} was unloaded before its answer started.")
            if adapter_id != self._active:
                self._apply(adapter_id)
                self._active = adapter_id
            yield self.base.model

    @property
    def scheduler(self) -> Any:
        """The `BatchScheduler` answering `stream_generate` when batching is on (made on first use).

        Under a lock of its own, not the adapter lock: the scheduler holds that one for a whole
        turn, and a request that waited for it here could not join the batch running meanwhile
        (it waited for the batch to drain: continuous batching undone)."""
        scheduler = self._scheduler
        if scheduler is None:
            with self._scheduler_lock:
                if self._scheduler is None:
                    from cl_assets.core.model.batching import BatchScheduler

                    config_eos = getattr(self.base.model.generation_config, "eos_token_id", None)
                    self._scheduler = BatchScheduler(
                        self.tokenizer, self._turn, max_batch=self.max_batch, contended=lambda: self._waiting > 0,
                        eos_ids=_as_set(self.tokenizer.eos_token_id) | _as_set(config_eos),
                    )  # fmt: skip
                scheduler = self._scheduler
        return scheduler

    def stream_generate(self, messages: Sequence[Message], adapter_id: str | None, **kwargs: Any) -> GenerationStream:
        """A `GenerationStream` answered with `adapter_id` (None: base) active.

        The switch happens inside the generation thread, under the lock, so a hot-swap from
        another thread waits for the answer in flight instead of changing it half-way.
        kwargs as for `stream_generate`.
        """
        if adapter_id is not None and adapter_id not in self._paths:
            raise ModelError(f"Adapter {adapter_id} is not loaded; call ensure_loaded(id, path) first.")
        if self.batching:
            from cl_assets.core.model.batching import BatchedStream

            return BatchedStream(self.scheduler, adapter_id, self.base.model, self.tokenizer, messages, **kwargs)
        return GenerationStream(self.model, self.tokenizer, messages, guard=lambda: self.using(adapter_id), **kwargs)

    def generate(self, messages: Sequence[Message], adapter_id: str | None, **kwargs: Any) -> GenerationResult:
        """Answer with `adapter_id` (None: base) active; kwargs as for `generate`."""
        stream = self.stream_generate(messages, adapter_id, **kwargs)
        for _ in stream:
            pass
        return stream.result
