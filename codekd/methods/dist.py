"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022), as the study codes it.

The study (Wang et al., arXiv 2508.15423, STUDY.md §4.2): with p = softmax(z/T),
L = β·(1 − ρ(p_s, p_t)) + γ·(1 − ρ(p_sᵀ, p_tᵀ)), ρ the mean row-wise Pearson correlation: an inter-class
term per sample and an intra-class term per class across the batch. Unlike the paper there is no T² factor
and no label term. The study's code has no default temperature; its README uses T = 10, the default here.

On binary tasks (defect, clone) the inter-class correlation is ±1 and gives no gradient, so only the
intra-class term trains the student. ``eps`` is the correlation's norm floor (the study's 1e-8; see
:func:`codekd.losses.dist` for the gradient hazard it bounds). Needs only logits, so it works for GRU and
transformer students.
"""

from torch import Tensor

from codekd import losses
from codekd.methods import Method, register
from codekd.models.adapters import Outputs


@register
class Dist(Method):
    name = "dist"
    summary = "DIST: inter- and intra-class Pearson correlation of softmax(z/T) with the teacher's"
    defaults = {"temperature": 10.0, "beta": 1.0, "gamma": 1.0, "eps": 1e-8}

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        loss = losses.dist(student.logits, teacher.logits, self.hp["temperature"], self.hp["beta"],
                           self.hp["gamma"], self.hp["eps"])
        return {"loss": loss}
