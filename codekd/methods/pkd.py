"""PKD: Patient Knowledge Distillation (Sun et al., "Patient Knowledge Distillation for BERT Model
Compression", EMNLP 2019), as the study codes it (Wang et al., arXiv 2508.15423, STUDY.md §4.3).

L = α·T²·CE(z_s/T, softmax(z_t/T)) + (1 − α)·CE(z_s, y) + β·MSE(n(h_s), n(W_l h_t)), n the L2 normalisation.
The features are first-token ([CLS]/<s>) vectors: student layer j (1..L_s − 1) against teacher layer
map(j) (PKD-"skip", see :mod:`codekd.methods.layermap`); the last student layer's pair is dropped, as in
the study. Each teacher vector goes through its own trainable ``Linear(teacher width → student width)``,
optimised with the student and discarded afterwards (all layers' projections run as one batched product).
For a BiGRU student the features are each GRU layer's final states (forward ‖ backward, 2H).

Options: ``layers`` is an explicit map with one teacher layer per student layer ("3,6,9,12"; the last
entry is unused because its pair is dropped). The defaults are the study's (α = 1: no label term).
"""

from typing import Any

import torch
from torch import Tensor, nn

from codekd import losses
from codekd.methods import Method, register
from codekd.methods.layermap import matched_indices
from codekd.models.adapters import ModelShape, Outputs


@register
class PatientKD(Method):
    name = "pkd"
    summary = "PKD: soft CE·T² + normalised MSE of projected first-token vectors of matched layers"
    teacher_needs = ("logits", "first_token")
    student_needs = ("logits", "first_token")
    defaults = {"alpha": 1.0, "beta": 10.0, "temperature": 10.0, "layers": ""}
    fractions = ("alpha",)

    def __init__(self, student: ModelShape, teacher: ModelShape | None = None, **hparams: Any):
        super().__init__(student, teacher, **hparams)
        if student.num_layers < 2:
            raise ValueError("pkd needs a student with at least 2 layers: the last layer's pair is dropped")
        student_idx, teacher_idx = matched_indices(student, teacher, self.hp["layers"], embeddings=False)
        self.student_idx, self.teacher_idx = student_idx[:-1], teacher_idx[:-1]
        self.projections = nn.ModuleList(
            nn.Linear(teacher.feature_size, student.feature_size) for _ in self.teacher_idx
        )

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        logit = losses.kd_loss(student.logits, teacher.logits, labels, self.hp["temperature"],
                               self.hp["alpha"], t_squared=True)
        student_features = torch.stack([student.first_token[i] for i in self.student_idx], dim=1)
        teacher_features = torch.stack([teacher.first_token[i] for i in self.teacher_idx], dim=1)  # (B, L, Ht)
        weight = torch.stack([proj.weight for proj in self.projections])  # (L, Hs, Ht): one product, all layers
        bias = torch.stack([proj.bias for proj in self.projections])
        teacher_features = torch.einsum("blt,lst->bls", teacher_features, weight) + bias
        features = losses.pkd_features(student_features, teacher_features)
        loss = logit + self.hp["beta"] * features
        return {"loss": loss, "logit": logit.detach(), "features": features.detach()}
