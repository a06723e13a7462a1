"""The one place that knows model internals: a uniform view of any model's outputs for the losses.

Methods never touch a model's modules; they receive `Outputs`. Hidden states follow Hugging Face
conventions: for transformers, layer 0 is the embedding output and layers 1..L the blocks; for the
BiGRU student, layers 1..L are the GRU layers (no embedding entry) and its per-layer first-token
vectors are the per-layer final states (forward ‖ backward), as in the study's PKD for BiGRU. `values` are the
last layer's self-attention value vectors (MiniLM's value relation), read by a forward hook on the value
projection of BERT/RoBERTa-style encoders (`encoder.layer[-1].attention.self.value`).

Decoder-only classifiers (Qwen2, Llama, GPT-2 … `ForSequenceClassification`) classify from their last
token, so their per-layer "first-token" vectors are taken at the last real token of each row; they get
position ids counted over real tokens, so a left- or right-padded row gives its unpadded outputs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from codekd.data.text import shown
from codekd.models import attention

NEEDS = ("logits", "hidden_states", "first_token", "attentions", "values")


@dataclass
class Outputs:
    """What a model produced for one batch; fields a method did not ask for stay None."""

    logits: Tensor
    mask: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    first_token: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    values: Tensor | None = None  # the last layer's value vectors, (B, heads, N, head size)
    targets: Tensor | None = None  # a teacher cache's per-token targets for the method (B, N, F), e.g. CKD's relations

    def to(self, device: torch.device | str) -> Outputs:
        """The same outputs on `device` (a teacher placed on another device than the student's)."""
        def move(states: tuple[Tensor | None, ...] | None) -> tuple[Tensor | None, ...] | None:
            return None if states is None else tuple(None if s is None else s.to(device) for s in states)

        return Outputs(self.logits.to(device), self.mask.to(device), move(self.hidden_states),
                       move(self.first_token), move(self.attentions),
                       None if self.values is None else self.values.to(device),
                       None if self.targets is None else self.targets.to(device))


@dataclass(frozen=True)
class ModelShape:
    """What a method needs to know to build projections and layer maps."""

    kind: str
    num_layers: int
    hidden_size: int
    feature_size: int


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP/compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def is_gru(model: nn.Module) -> bool:
    return getattr(unwrap(model).config, "model_type", "") == "bigru"


def is_decoder_only(model: nn.Module) -> bool:
    """A causal LM family (Qwen2, Llama, GPT-2, …): it has a causal-LM class and no masked-LM one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(unwrap(model).config, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def last_real_token(mask: Tensor) -> Tensor:
    """Index of each row's last real token, for left and right padding alike (the rightmost 1 of `mask`)."""
    positions = torch.arange(mask.size(1), device=mask.device)
    return (positions * mask.to(positions.dtype)).argmax(-1)


def reorder_labels(model: nn.Module, order: list[int]) -> None:
    """Permute a classifier's output classes in place: new class i is old class `order[i]`.

    The head is the model's last `nn.Linear` with one output per class (`classifier.out_proj` of
    RoBERTa, `score` of the decoder-only classifiers, `classifier` of BERT).
    """
    if order == list(range(len(order))):
        return
    heads = [m for m in unwrap(model).modules() if isinstance(m, nn.Linear) and m.out_features == len(order)]
    if not heads:
        raise ValueError(f"no output layer with {len(order)} classes found to reorder")
    head, index = heads[-1], torch.tensor(order)
    with torch.no_grad():
        head.weight.copy_(head.weight[index])
        if head.bias is not None:
            head.bias.copy_(head.bias[index])


def shape_of(model: nn.Module) -> ModelShape:
    """Layers and widths; the GRU's features are bidirectional (2H)."""
    cfg = unwrap(model).config
    gru = is_gru(model)
    hidden = cfg.hidden_size
    return ModelShape("gru" if gru else "transformer", cfg.num_hidden_layers, hidden,
                      2 * hidden if gru else hidden)


def run(model: nn.Module, inputs: dict[str, Tensor], needs: Collection[str] = ("logits",)) -> Outputs:
    """Forward `model` on a padded batch and collect what `needs` names."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"unknown model outputs {sorted(unknown)}; known: {NEEDS}")
    if "attentions" in needs and is_gru(model):
        raise ValueError("a BiGRU student has no attention maps")
    hidden = bool({"hidden_states", "first_token"} & set(needs))
    decoder = is_decoder_only(model)
    if decoder:
        inputs = {**inputs, "position_ids": (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)}
    captured: list[Tensor] = []
    hook = _value_projection(model).register_forward_hook(lambda m, i, o: captured.append(o)) \
        if "values" in needs else None
    try:
        out = model(**inputs, output_hidden_states=hidden, output_attentions="attentions" in needs,
                    return_dict=True)
    finally:
        if hook is not None:
            hook.remove()
    res = Outputs(logits=out.logits, mask=inputs["attention_mask"])
    if hook is not None:
        heads = unwrap(model).config.num_attention_heads
        b, n, width = captured[-1].shape
        res.values = captured[-1].view(b, n, heads, width // heads).transpose(1, 2)
    if hidden:
        res.hidden_states = tuple(out.hidden_states)
        if is_gru(model):
            res.first_token = tuple(out.final_states)
        elif decoder:
            rows, last = torch.arange(res.mask.size(0), device=res.mask.device), last_real_token(res.mask)
            res.first_token = tuple(h[rows, last] for h in out.hidden_states)
        else:
            res.first_token = tuple(h[:, 0] for h in out.hidden_states)
    if "attentions" in needs:
        if not out.attentions:
            raise ValueError("the model returned no attention maps; load it with attn_implementation='eager'")
        res.attentions = tuple(out.attentions)
    return res


def _value_projection(model: nn.Module) -> nn.Module:
    """The last encoder layer's value projection (BERT, RoBERTa, CodeBERT, UniXcoder layout)."""
    base = unwrap(model)
    if is_gru(base):
        raise ValueError("a BiGRU student has no attention, so no value vectors")
    modules = _self_attentions(base)
    value = getattr(modules[-1], "value", None) if modules else None
    if not isinstance(value, nn.Linear):
        raise ValueError(f"value vectors: a {shown(base.config.model_type)} model has no BERT/RoBERTa-style value "
                         "projection (encoder.layer[-1].attention.self.value); MiniLM's value_relation needs one")
    return value


@torch.no_grad()
def run_frozen(model: nn.Module, inputs: dict[str, Tensor], needs: Collection[str]) -> Outputs:
    """A teacher's outputs: eval mode, no gradient, usable as loss targets."""
    model.eval()
    return run(model, inputs, needs)


def prepare(model: nn.Module, needs: Collection[str], attention_layers: Sequence[int] | None = None,
            own_attention: bool = True) -> nn.Module:
    """Give a transformer the attention it needs. By default codekd's (`codekd.models.attention`) in place of
    sdpa: it trains with attention dropout on a CPU at near-fused cost. With attention maps needed, eager
    attention (sdpa returns none), unless `attention_layers` names the only layers read and the model has a
    BERT/RoBERTa layout: then codekd's attention returns maps in those layers only. `own_attention=False`
    keeps transformers' attention, whose dropout draws torch's random stream (the study's, for --study-compat)."""
    if is_gru(model):
        return model
    base = unwrap(model)
    fast = own_attention and base.config._attn_implementation in ("sdpa", attention.NAME) \
        and getattr(base, "_supports_attention_backend", False)
    modules = _self_attentions(base)
    bert_layout = bool(modules) and all(isinstance(m, nn.Module) for m in modules)
    if "attentions" in needs and not (fast and attention_layers is not None and bert_layout):
        base.set_attn_implementation("eager")
    elif fast:
        base.set_attn_implementation(attention.register())
        if "attentions" in needs:
            for i in attention_layers:
                setattr(modules[i], attention.MAPS, True)
    return model


def _self_attentions(base: nn.Module) -> list[nn.Module | None]:
    """Each encoder layer's BERT/RoBERTa-style self-attention module (encoder.layer[i].attention.self), None
    where a layer has none; empty for a model without such an encoder."""
    layers = getattr(getattr(base.base_model, "encoder", None), "layer", None)
    return [getattr(getattr(layer, "attention", None), "self", None) for layer in layers or ()]


def align_to(outputs: Outputs, index: Tensor, valid: Tensor) -> Outputs:
    """A teacher's token-level outputs re-ordered to the student's token positions.

    `index[b, j]` is the teacher token paired with student token j (-1: none), `valid` the student's
    mask; the result's mask is 1 only where a student token has a teacher partner.
    """
    idx = index.clamp(min=0)
    mask = outputs.mask.gather(1, idx) * valid * (index >= 0)

    def tokens(h: Tensor, dim: int) -> Tensor:
        shape = [1] * h.dim()
        shape[0], shape[dim] = idx.size(0), idx.size(1)
        expand = list(h.shape)
        expand[dim] = idx.size(1)
        return h.gather(dim, idx.view(shape).expand(expand))

    hidden = None if outputs.hidden_states is None else tuple(tokens(h, 1) for h in outputs.hidden_states)
    attn = None if outputs.attentions is None else tuple(tokens(tokens(a, 2), 3) for a in outputs.attentions)
    values = None if outputs.values is None else tokens(outputs.values, 2)
    return Outputs(outputs.logits, mask, hidden, outputs.first_token, attn, values)
