"""Attention with dropout at near-fused cost on a CPU, registered with transformers as ``codekd_sdpa``.

Why: PyTorch's fused CPU attention kernel (flash) refuses dropout on the attention probabilities, so a
RoBERTa student trained with the study's attention dropout (0.1) falls back to the unfused "math" path. That
path writes every (B, H, L, L) intermediate out to memory, and draws its dropout mask with a serial Bernoulli
sampler (0.5 s per layer at batch 32, 512 tokens, 4 heads): a training step took 2.5x as long as one without
attention dropout (``bench/vs_study.py``). This module computes the same function, softmax(QK^T s + M) with
dropout then times V, one example at a time, so each example's (H, L, L) block stays in the CPU's cache, and
recomputes the probabilities in the backward pass instead of keeping them (as flash attention does). The
dropout mask is drawn by NumPy's PCG64 generator, seeded from torch's, so a fixed seed still gives the same
run; it keeps each probability with chance 1 - p (to within 2^-32) and scales it by 1 / (1 - p), as
``nn.Dropout`` does. Everything else (a GPU, no dropout, half precision, causal or windowed attention,
grouped heads) goes to transformers' own sdpa function unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "codekd_sdpa"
MAPS = "codekd_attention_maps"  # set True on a self-attention module whose maps are read
_DTYPES = (torch.float32, torch.float64)


def keep_mask(shape: tuple[int, ...], p: float) -> Tensor:
    """A boolean mask, True with chance 1 - p for each entry, drawn from a generator seeded by torch's."""
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    n = math.prod(shape)
    bits = np.random.default_rng(seed).bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]
    return torch.from_numpy(bits >= np.uint32(round(p * 2**32))).view(shape)


def _scores(q: Tensor, kt: Tensor, mask: Tensor | None) -> Tensor:
    """One example's attention probabilities from its scaled queries, transposed keys and boolean mask."""
    if mask is None:
        return torch.softmax(torch.matmul(q, kt), -1)
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
    return torch.softmax(torch.baddbmm(bias, q, kt), -1)


class DropoutAttention(torch.autograd.Function):
    """softmax(q k^T scale + mask) * keep / (1 - p) @ v over (B, H, L, D) inputs, example by example."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, keep: Tensor, scale: float,
                p: float) -> Tensor:
        qs, kt, inv = q * scale, k.transpose(-1, -2), 1.0 / (1.0 - p)
        out = torch.empty_like(q)
        for b in range(q.size(0)):
            probs = _scores(qs[b], kt[b], None if mask is None else mask[b])
            torch.matmul(torch.ops.aten.native_dropout_backward(probs, keep[b], inv), v[b], out=out[b])
        ctx.save_for_backward(qs, k, v, mask, keep)
        ctx.scale, ctx.inv = scale, inv
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        qs, k, v, mask, keep = ctx.saved_tensors
        kt, inv = k.transpose(-1, -2), ctx.inv
        dq, dk, dv = torch.empty_like(qs), torch.empty_like(k), torch.empty_like(v)
        for b in range(qs.size(0)):
            probs = _scores(qs[b], kt[b], None if mask is None else mask[b])
            torch.matmul(torch.ops.aten.native_dropout_backward(probs, keep[b], inv).transpose(-1, -2), grad[b],
                         out=dv[b])
            dprobs = torch.ops.aten.native_dropout_backward(torch.matmul(grad[b], v[b].transpose(-1, -2)), keep[b],
                                                            inv)
            dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype)
            torch.matmul(dscores, k[b], out=dq[b])
            torch.matmul(dscores.transpose(-1, -2), qs[b], out=dk[b])
        return dq.mul_(ctx.scale), dk, dv, None, None, None, None


def attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
              dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """transformers' attention-function interface: `DropoutAttention` where it pays, sdpa everywhere else; the
    direct form, returning the (post-dropout, as eager's) maps, in a module that `MAPS` marks."""
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    if getattr(module, MAPS, False):
        return _with_maps(query, key, value, attention_mask, dropout, scale)
    plain = (dropout == 0 or query.device.type != "cpu" or query.dtype not in _DTYPES
             or key.dtype != query.dtype or value.dtype != query.dtype or key.size(1) != query.size(1)
             or getattr(module, "is_causal", True) or kwargs.get("sliding_window") or kwargs.get("softcap")
             or (attention_mask is not None and attention_mask.dtype != torch.bool))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    keep = keep_mask((query.size(0), query.size(1), query.size(2), key.size(2)), dropout)
    mask = None if attention_mask is None else attention_mask.expand(-1, -1, query.size(2), key.size(2))
    out = DropoutAttention.apply(query, key, value, mask, keep, scale, dropout)
    return out.transpose(1, 2).contiguous(), None


def _with_maps(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, scale: float) -> tuple[Tensor, Tensor]:
    """Attention and its maps, as transformers' eager attention computes them, with `keep_mask`'s dropout."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, -1)
    if p > 0:
        probs = probs * keep_mask(probs.shape, p) / (1 - p)
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), probs


def register() -> str:
    """Register `attention` (with sdpa's boolean masks) under `NAME` (again is harmless); returns the name."""
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
