"""CKD: Contextual Knowledge Distillation (Park, Kim and Yang, "Distilling Linguistic Context for Language
Model Compression", EMNLP 2021), as the study codes it (Wang et al., arXiv 2508.15423, STUDY.md §4.4).

L = α·T²·CE(z_s/T, softmax(z_t/T)) + (1 − α)·CE(z_s, y) + β·[WR + γ·LTR], with the word-relation (WR)
and layer-transforming-relation (LTR) losses of :func:`codekd.losses.ckd_relations` (cosine distances and
angles in a window of W tokens/layers; no projection needed). Layers: a transformer student compares its
embedding output and layers 1..L_s with the teacher's embedding output and layers map(1..L_s); a BiGRU
student compares its L_s GRU layer outputs with teacher layers map(1..L_s) (no embeddings), as the study.

Tokens are matched by position (the study's ``--align position``): when the tokenizers give different
lengths both sides are cut to the shorter one, and a position is real only if it is real on both sides.
``study_padding=False`` (default) drops every relation that touches a pad; ``True`` keeps pads and
out-of-range window slots in the means, reproducing the study. Defaults are the study's (α = 1).

With ``study_padding=False`` a teacher cache stores the teacher's relations (:meth:`teacher_targets`), computed
once, instead of its states: the teacher's side then costs a read, not a computation, at every step.
"""

from typing import Any

from torch import Tensor

from codekd import losses, relations
from codekd.methods import Method, TeacherTargets, register
from codekd.methods.layermap import common_positions, matched_indices, stack_layers
from codekd.models.adapters import ModelShape, Outputs


@register
class ContextualKD(Method):
    name = "ckd"
    summary = "CKD: soft CE·T² + word- and layer-relation (distance, angle) losses on hidden states"
    teacher_needs = ("logits", "hidden_states")
    student_needs = ("logits", "hidden_states")
    defaults = {"alpha": 1.0, "beta": 10.0, "gamma": 10.0, "temperature": 3.0, "window": 10,
                "study_padding": False, "layers": ""}
    fractions = ("alpha",)

    def __init__(self, student: ModelShape, teacher: ModelShape | None = None, **hparams: Any):
        super().__init__(student, teacher, **hparams)
        if self.hp["window"] < 1:
            raise ValueError(f"method 'ckd': option window={self.hp['window']} must be 1 or more")
        self.student_idx, self.teacher_idx = matched_indices(
            student, teacher, self.hp["layers"], embeddings=True
        )

    def teacher_cacheable(self) -> bool:
        """The study's padding mode reads the teacher's states at pad positions, which a cache does not keep."""
        return not self.hp["study_padding"]

    def teacher_targets(self) -> TeacherTargets | None:
        """The teacher's word and layer relations at the matched layers, over its real tokens
        (:func:`codekd.relations.teacher_relations`); none in the study's padding mode, which is not cached."""
        if self.hp["study_padding"]:
            return None
        params = {"format": 1, "window": self.hp["window"], "layers": list(self.teacher_idx)}
        return TeacherTargets("ckd_relations", params, ("logits",), self._teacher_relations)

    def _teacher_relations(self, teacher: Outputs) -> Tensor:
        n = teacher.mask.shape[1]
        return relations.teacher_relations(stack_layers(teacher.hidden_states, self.teacher_idx, n),
                                           self.hp["window"], teacher.mask)

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        logit = losses.kd_loss(student.logits, teacher.logits, labels, self.hp["temperature"],
                               self.hp["alpha"], t_squared=True)
        n, mask = common_positions(student, teacher)
        cached = teacher.targets
        relation = losses.ckd_relations(
            stack_layers(student.hidden_states, self.student_idx, n),
            None if cached is not None else stack_layers(teacher.hidden_states, self.teacher_idx, n),
            self.hp["window"],
            self.hp["gamma"],
            None if self.hp["study_padding"] else mask,
            cached=cached,
        )
        loss = logit + self.hp["beta"] * relation
        return {"loss": loss, "logit": logit.detach(), "relations": relation.detach()}
