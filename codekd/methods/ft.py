"""FT: plain fine-tuning on the labels, the study's baseline (no teacher)."""

from torch import Tensor

from codekd.losses import hard_cross_entropy
from codekd.methods import Method, register
from codekd.models.adapters import Outputs


@register
class FineTune(Method):
    name = "ft"
    summary = "cross-entropy on the labels; no teacher"
    teacher_needs = ()

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        loss = hard_cross_entropy(student.logits, labels)
        return {"loss": loss, "ce": loss}
