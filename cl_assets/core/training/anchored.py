"""SFT with a distillation anchor: learn the snapshot's answers, keep the base's distribution elsewhere.

Each optimizer step adds to the snapshot batch's cross-entropy `anchor_weight` times the KL
divergence KL(base ‖ adapter) of the next-token distributions on one batch of anchor rows (the
base model's own answers to general prompts, `core/anchor.py`), over their answer tokens. The
base's distribution comes from the same model with the LoRA layers switched off
(`disable_adapter()`), so no second copy of the weights is held.

Why not mix the anchor rows in as ordinary SFT targets (the earlier recipe): cross-entropy on
the base's greedy text sharpens the model towards that one text, which is itself an update, and
measured as one: an adapter trained on nothing but those rows flipped 29 % of the general set
(docs/learning.md). KL is minimised by the base itself, so on anchor prompts the only pull is
back to the base, over the whole distribution, including the token that decides an answer.
The anchor rows are a stream of their own (cycled, reshuffled each pass), so the number of
steps follows the snapshot, not the snapshot plus the anchors.

Built lazily: TRL and torch are imported only when training runs.
"""

from __future__ import annotations

from typing import Any


def kl_to_base(student_logits: Any, base_logits: Any, labels: Any) -> Any:
    """Mean over answer tokens of KL(base ‖ student) of the next-token distributions.

    `labels` is TRL's: the token ids with -100 where no loss applies; position t predicts
    token t + 1, so the logits at t count when labels[t + 1] is an answer token.
    """
    import torch

    counted = labels[:, 1:] != -100
    if not bool(counted.any()):
        return student_logits.sum() * 0.0  # keeps the graph; a batch of prompts only adds nothing
    student = torch.log_softmax(student_logits[:, :-1][counted].float(), dim=-1)
    base = torch.log_softmax(base_logits[:, :-1][counted].float(), dim=-1)
    return torch.nn.functional.kl_div(student, base, log_target=True, reduction="batchmean")


def anchored_sft_trainer_class() -> type:
    """`AnchoredSFTTrainer`, a `trl.SFTTrainer` with the anchor term (see the module docstring)."""
    import torch
    from trl import SFTTrainer

    class AnchoredSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, anchor_dataset: Any, anchor_weight: float, anchor_batch_size: int,
                     **kwargs: Any) -> None:  # fmt: skip
            super().__init__(*args, **kwargs)
            prepared = self._prepare_dataset(
                anchor_dataset, self.processing_class, self.args, False, None, "anchor"
            )
            keep = [c for c in ("input_ids", "labels", "seq_lengths") if c in prepared.column_names]
            self._anchor_rows = prepared.select_columns(keep)
            self._anchor_weight = anchor_weight
            self._anchor_batch_size = anchor_batch_size
            self._anchor_batches: Any = iter(())
            self._anchor_pass = 0
            self._anchor_kl: list[float] = []

        def _next_anchor_batch(self) -> dict[str, Any]:
            batch = next(self._anchor_batches, None)
            if batch is None:  # a new pass over the anchor rows, in a new seeded order
                self._anchor_pass += 1
                order = self._anchor_rows.shuffle(seed=self.args.seed + self._anchor_pass)
                loader = torch.utils.data.DataLoader(
                    order, batch_size=self._anchor_batch_size, collate_fn=self.data_collator, drop_last=False
                )
                self._anchor_batches = iter(loader)
                batch = next(self._anchor_batches)
            # The padding-free collator also hands over plain ints (sequence lengths for flash kernels).
            return {k: v.to(self.args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not model.training or self._anchor_weight == 0:
                return result
            loss, outputs = result if return_outputs else (result, None)
            anchor = self._next_anchor_batch()
            labels = anchor.pop("labels")
            peft_model = self.accelerator.unwrap_model(model)
            with torch.no_grad(), peft_model.disable_adapter():
                base_logits = model(**anchor, use_cache=False).logits
            student_logits = model(**anchor, use_cache=False).logits
            kl = kl_to_base(student_logits, base_logits, labels)
            self._anchor_kl.append(float(kl.detach()))
            # Under gradient accumulation the Trainer divides nothing itself when it passes
            # num_items_in_batch: spread the anchor term over the accumulated micro-batches too.
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self._anchor_weight * kl / steps
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self._anchor_kl and "loss" in logs:
                logs["anchor_kl"] = sum(self._anchor_kl) / len(self._anchor_kl)
                self._anchor_kl.clear()
            super().log(logs, start_time)

    return AnchoredSFTTrainer
