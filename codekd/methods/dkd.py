"""DKD: Decoupled Knowledge Distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

L = w·CE(z_s, y) + α·TCKD + β·NCKD (:func:`codekd.losses.dkd`, each KL term scaled by T²), with the
paper's defaults α = 1, β = 8, T = 4 and its label term (``ce_weight`` w = 1). ``warmup_epochs`` E > 0
scales the decoupled term by min(epoch / E, 1) (epochs counted from 1), the linear warm-up of the
authors' reference code (mdistiller, ``mdistiller/distillers/DKD.py``, ``DKD.forward_train``:
``min(kwargs["epoch"] / self.warmup, 1.0)``, 20 epochs in its CIFAR-100 configs); the default 0 applies no
warm-up.

With 2 classes (defect, clone) there is one non-target class, so NCKD is 0 and only TCKD (and the label
term) trains the student. Needs only logits, so it works for GRU and transformer students.
"""

from torch import Tensor

from codekd import losses
from codekd.methods import Method, register
from codekd.models.adapters import Outputs


@register
class DecoupledKD(Method):
    name = "dkd"
    summary = "DKD: CE on labels + target-class (TCKD) and non-target-class (NCKD) KL terms"
    defaults = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "ce_weight": 1.0, "warmup_epochs": 0.0}

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        ce = losses.hard_cross_entropy(student.logits, labels)
        decoupled = losses.dkd(student.logits, teacher.logits, labels, self.hp["temperature"],
                               self.hp["alpha"], self.hp["beta"])
        if self.hp["warmup_epochs"] > 0:
            decoupled = min(self.epoch / self.hp["warmup_epochs"], 1.0) * decoupled
        loss = self.hp["ce_weight"] * ce + decoupled
        return {"loss": loss, "ce": ce.detach(), "dkd": decoupled.detach()}
