"""MiniLM self-attention distribution transfer (Wang et al., "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020).

L = KL(A_t ‖ A_s) of the student's last-layer attention distributions against one teacher layer's
(:func:`codekd.losses.attention_relation`; the paper distils the last layer, ``teacher_layer=-1``), plus
``value_relation``·KL(VR_t ‖ VR_s) of the last layers' value relations softmax(V Vᵀ/√d_k)
(:func:`codekd.losses.value_relation`, MiniLM §3.1 eq. 7-8; the paper's loss has weight 1, the default 0
keeps the attention term alone), plus ``kd_weight``·CE(z_s/T, softmax(z_t/T)) (off by default: MiniLM itself
uses no logits). ``reduction``: ``token`` (default) averages the KL over the real query rows of the whole
batch; ``example`` averages each example's rows, then the examples, as the paper defines the loss per
example (MiniLM §3.1, eq. 5-6: the mean over heads and the |x| tokens of one input).

Tokens are matched by position as in CKD (:mod:`codekd.methods.layermap`): both maps are cut to the shorter
length and keys that are padding on either side are removed, then every query row is renormalised over
the remaining keys, so that both sides are distributions over the same tokens (when the lengths and masks
agree this changes nothing). Only real query rows are averaged. Transformer students only: a BiGRU has no
attention maps, and students must run eager attention (SDPA returns no maps).
"""

from typing import Any

import torch
from torch import Tensor

from codekd import losses
from codekd.data.text import shown
from codekd.methods import Method, all_methods, register
from codekd.methods.layermap import common_positions
from codekd.models.adapters import ModelShape, Outputs


def _over_keys(attention: Tensor, n: int, keys: Tensor) -> Tensor:
    """(B, heads, n, n) attention cut to n positions, restricted to ``keys`` (B, n) and renormalised."""
    kept = attention[..., :n, :n].float() * keys[:, None, None, :]
    return kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)


@register
class MiniLM(Method):
    name = "minilm"
    summary = "MiniLM: KL of last-layer self-attention distributions (+ optional soft CE)"
    teacher_needs = ("logits", "attentions")
    student_needs = ("logits", "attentions")
    defaults = {"teacher_layer": -1, "kd_weight": 0.0, "temperature": 1.0, "reduction": "token",
                "value_relation": 0.0}

    def __init__(self, student: ModelShape, teacher: ModelShape | None = None, **hparams: Any):
        super().__init__(student, teacher, **hparams)
        if student.kind != "transformer":
            fitting = ", ".join(name for name, method in all_methods().items()
                                if "attentions" not in method.student_needs)
            raise ValueError(f"minilm needs attention maps, which a BiGRU student does not have; "
                             f"methods for a GRU student: {fitting}")
        layer = self.hp["teacher_layer"]
        if not (1 <= abs(layer) <= teacher.num_layers):
            raise ValueError(f"teacher_layer={layer}: use 1..{teacher.num_layers}, or -1 for the last layer "
                             f"(negative values count from the end)")
        self.teacher_idx = layer - 1 if layer > 0 else layer
        if self.hp["reduction"] not in ("token", "example"):
            reduction = shown(self.hp["reduction"])
            raise ValueError(f"method 'minilm': option reduction={reduction}: expected token or example")
        if self.hp["value_relation"] > 0:
            if self.teacher_idx not in (-1, teacher.num_layers - 1):
                raise ValueError(f"method 'minilm': value_relation uses the last layers' value vectors (the "
                                 f"paper's), so teacher_layer={layer} cannot go with it: set teacher_layer -1")
            self.teacher_needs, self.student_needs = self.needs(self.hp)

    @classmethod
    def needs(cls, hparams: dict[str, Any] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The value relation also needs both models' last-layer value vectors."""
        teacher, student = super().needs(hparams)
        if cls.options(hparams or {})["value_relation"] > 0:
            return (*teacher, "values"), (*student, "values")
        return teacher, student

    def teacher_layers(self) -> dict[str, list[int]]:
        """One teacher layer's attention maps are compared: a cache keeps that layer's only."""
        return {"attentions": [self.teacher_idx]}

    def student_attention_layers(self) -> list[int]:
        """The student's last layer is compared: its other layers need no maps."""
        return [-1]

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        n, mask = common_positions(student, teacher)
        attention = losses.attention_relation(
            _over_keys(student.attentions[-1], n, mask),
            _over_keys(teacher.attentions[self.teacher_idx], n, mask),
            mask,
            self.hp["reduction"],
        )
        logit = losses.soft_cross_entropy(student.logits, teacher.logits, self.hp["temperature"])
        loss = attention + self.hp["kd_weight"] * logit
        parts = {"attention": attention.detach(), "logit": logit.detach()}
        if self.hp["value_relation"] > 0:
            value = losses.value_relation(student.values[:, :, :n], teacher.values[:, :, :n], mask,
                                          self.hp["reduction"])
            loss = loss + self.hp["value_relation"] * value
            parts["value"] = value.detach()
        return {"loss": loss, **parts}
