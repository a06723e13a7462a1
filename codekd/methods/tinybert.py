"""TinyBERT intermediate-layer and prediction-layer distillation (Jiao et al., "TinyBERT: Distilling BERT for
Natural Language Understanding", Findings of EMNLP 2020).

L = hidden_weight·MSE(H_s W_h, H_t) + kd_weight·CE(z_s/T, softmax(z_t/T)) (:func:`codekd.losses.hidden_mse`
over real tokens, :func:`codekd.losses.soft_cross_entropy`; the paper's prediction loss uses T = 1).
As in the paper, one trainable ``W_h = Linear(student width → teacher width)`` shared by all layers maps the
student's states into the teacher's space; it is optimised with the student and discarded afterwards.
Projecting the student (not the teacher) matters: with a trainable map on the teacher side the loss can be
driven to 0 by shrinking both the map and the student's states. Layers: a transformer student's embedding
output and layers 1..L_s against the teacher's embedding output and layers map(1..L_s)
(:mod:`codekd.methods.layermap`); a BiGRU student's L_s GRU layer outputs (2H) against teacher layers
map(1..L_s). ``attention_weight`` > 0 adds the paper's attention loss (eq. 8;
:func:`codekd.losses.attention_mse`): the MSE of student layer j's attention maps against teacher layer
map(j)'s, over real (query, key) pairs, averaged over the L_s layers; transformer students only (a BiGRU has
no attention). It compares the attention probabilities, as Hugging Face models return them, where the
paper's code compares pre-softmax scores. The default 0 leaves it out.

Tokens are matched by position as in CKD: both sides are cut to the shorter length and only positions
real on both sides enter the mean.
"""

from typing import Any

import torch
from torch import Tensor, nn

from codekd import losses
from codekd.methods import Method, register
from codekd.methods.layermap import common_positions, matched_indices, stack_layers
from codekd.models.adapters import ModelShape, Outputs


@register
class TinyBERT(Method):
    name = "tinybert"
    summary = "TinyBERT: MSE of projected hidden states of matched layers + soft CE"
    teacher_needs = ("logits", "hidden_states")
    student_needs = ("logits", "hidden_states")
    defaults = {"hidden_weight": 1.0, "kd_weight": 1.0, "temperature": 1.0, "layers": "", "attention_weight": 0.0}

    def __init__(self, student: ModelShape, teacher: ModelShape | None = None, **hparams: Any):
        super().__init__(student, teacher, **hparams)
        self.student_idx, self.teacher_idx = matched_indices(
            student, teacher, self.hp["layers"], embeddings=True
        )
        self.projection = nn.Linear(student.feature_size, teacher.feature_size)
        if self.hp["attention_weight"] > 0:
            if student.kind != "transformer":
                raise ValueError("method 'tinybert': attention_weight > 0 needs a transformer student "
                                 "(a BiGRU has no attention maps)")
            layers = matched_indices(student, teacher, self.hp["layers"], embeddings=False)
            self.attention_idx = [[i - 1 for i in side] for side in layers]  # attentions[j - 1] is layer j
            self.teacher_needs = (*self.teacher_needs, "attentions")
            self.student_needs = (*self.student_needs, "attentions")

    def teacher_layers(self) -> dict[str, list[int]]:
        """The matched teacher layers only (a cache keeps no other)."""
        layers = {"hidden_states": list(self.teacher_idx)}
        if self.hp["attention_weight"] > 0:
            layers["attentions"] = list(self.attention_idx[1])
        return layers

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        n, mask = common_positions(student, teacher)
        hidden = losses.hidden_mse(
            self.projection(stack_layers(student.hidden_states, self.student_idx, n)),
            stack_layers(teacher.hidden_states, self.teacher_idx, n),
            mask,
        )
        logit = losses.soft_cross_entropy(student.logits, teacher.logits, self.hp["temperature"])
        loss = self.hp["hidden_weight"] * hidden + self.hp["kd_weight"] * logit
        parts = {"hidden": hidden.detach(), "logit": logit.detach()}
        if self.hp["attention_weight"] > 0:
            student_idx, teacher_idx = self.attention_idx
            attention = losses.attention_mse(
                torch.stack([student.attentions[i][..., :n, :n] for i in student_idx], dim=1),
                torch.stack([teacher.attentions[i][..., :n, :n] for i in teacher_idx], dim=1),
                mask,
            )
            loss = loss + self.hp["attention_weight"] * attention
            parts["attention"] = attention.detach()
        return {"loss": loss, **parts}
