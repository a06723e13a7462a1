"""KD: vanilla knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015).

The study's variant (its `kd-ft` code): CE(z_s/T, softmax(z_t/T)) with soft targets only and no T²
factor, T=10. `alpha` < 1 mixes in the hard-label CE, and `t_squared` restores Hinton's T² scaling.
"""

from torch import Tensor

from codekd.losses import kd_loss
from codekd.methods import Method, register
from codekd.models.adapters import Outputs


@register
class VanillaKD(Method):
    name = "kd"
    summary = "soft cross-entropy to the teacher's softmax(z/T) (+ optional hard-label CE)"
    defaults = {"temperature": 10.0, "alpha": 1.0, "t_squared": False}
    fractions = ("alpha",)

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        return {"loss": kd_loss(student.logits, teacher.logits, labels, self.hp["temperature"],
                                self.hp["alpha"], self.hp["t_squared"])}
