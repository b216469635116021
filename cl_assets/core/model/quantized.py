"""Int4 weights for serving on a CPU: the decode step reads a quarter of bf16's bytes.

One answer's decode step is matrix-vector products over every weight (82 % of a bf16 step
on the EPYC of docs/benchmarks.md is `aten::mm`), so its speed is the bytes it reads. SmolLM2's
linear weights come from a GGUF file in Q4_1: blocks of 32 weights along a row, each block
`d·q + m` with q in 0..15. Quantizing the converted weights again with the min and max of
each block of 32 finds that same grid (the block's extremes are q = 0 and q = 15), so int4
holds exactly the weights CL's float32 base has, in 4.5 bits instead of 32. PyTorch's CPU
kernel for grouped int4 weights (`aten::_weight_int4pack_mm_for_cpu`) multiplies them with
bf16 activations; the scales are rounded to bf16 for it. (With fp32 activations the same
kernel ran 3x slower than dense fp32 here.) torchao's CPU int4 tensor (`Int4OpaqueTensor`, a
prototype in torchao 0.18) calls the same kernel; this module is written here instead because
an adapter has to run beside the int4 product (below), and torchao's wheel adds CUDA extension
libraries that do not load on these machines, for one kernel call and ten lines of quantizing.

An adapter is not merged into int4 weights (that would quantize the delta and cost a
re-quantization per swap): `set_delta(A, B, scale)` adds `scale·B·A·x` beside the int4
product, with the adapter's own fp32 matrices, so a swap stays a copy of A and B.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32  # Q4_1's block: weights along a row that share a scale and a minimum


def quantize_int4(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 of a (out, in) weight, `group` input columns per scale: (q in 0..15, as
    int32; scales_and_zeros (in/group, out, 2)), in the kernel's form `w = (q - 8)·scale + zero`."""
    out_features, in_features = weight.shape
    if in_features % group:
        raise ValueError(f"int4 needs the input size ({in_features}) to be a multiple of {group}")
    blocks = weight.detach().float().reshape(out_features, in_features // group, group)
    low, high = blocks.amin(-1), blocks.amax(-1)
    scale = (high - low) / 15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant block: q = 0, w = low
    q = torch.round((blocks - low[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.int32)
    scales_and_zeros = torch.stack([scale, low + 8 * scale], dim=-1).transpose(0, 1).contiguous()
    return q.reshape(out_features, in_features), scales_and_zeros


class Int4Linear(nn.Linear):
    """`nn.Linear` with int4 weights (PEFT wraps it as it wraps any Linear). `weight` is None:
    the packed weight (`qweight`, the name PEFT looks for to place LoRA layers, as for GPTQ)
    and its scales are buffers, so `.to(dtype)` casts the scales, which set the dtype the
    product is computed in."""

    def __init__(self, linear: nn.Linear, group: int = GROUP) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        q, scales_and_zeros = quantize_int4(linear.weight, group)
        self.register_parameter("weight", None)
        self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = linear.bias
        self._delta: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def set_delta(self, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> None:
        """Add `scale·B·A·x` to every output: an adapter, served beside the int4 weight."""
        self._delta = (lora_a, lora_b, scale)

    def clear_delta(self) -> None:
        self._delta = None

    @property
    def has_delta(self) -> bool:
        return self._delta is not None

    def dequantized(self) -> torch.Tensor:
        """The (out, in) weight the int4 data stands for, as the kernel computes with it."""
        eye = torch.eye(self.in_features, dtype=self.scales_and_zeros.dtype)
        return self._int4_mm(eye).T.float().contiguous()

    def _int4_mm(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.qweight, self.group, self.scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if rows.dtype != self.scales_and_zeros.dtype:
            rows = rows.to(self.scales_and_zeros.dtype)
        out = self._int4_mm(rows)
        if self._delta is not None:
            lora_a, lora_b, scale = self._delta
            out = out + ((rows.to(lora_a.dtype) @ lora_a.T) @ lora_b.T * scale).to(out.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4, group={self.group}"


def quantize_model_int4(model: nn.Module, group: int = GROUP) -> int:
    """Replace the decoder's linear layers by `Int4Linear` in place (not the LM head, which
    shares the embedding's weights); returns how many were replaced."""
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError("quantize the base before LoRA layers are added: their own Linear layers must stay float")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and child is not head and child.in_features % group == 0:
                    setattr(parent, name, Int4Linear(child, group))
                    replaced += 1
    return replaced
