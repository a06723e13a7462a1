"""COMBO: a weighted sum of other methods' losses, declared in the config rather than in code.

L = Σ_i w_i · L_i, each L_i the "loss" of a registered method built with its own options, e.g.

    method: combo
    hparams:
      parts:
        - {method: kd, weight: 1.0, temperature: 4}
        - {method: pkd, weight: 0.5, beta: 10, alpha: 1.0}

On the command line the same list is YAML text: ``--parts "[{method: kd}, {method: dist, weight: 0.5}]"``.
The parts are submodules, so their trainable pieces (PKD's projections, ...) are optimised with the student
and checkpointed; the combination asks the models for the union of what its parts need. Parts are
numbered from 0, in messages and in the per-part loss keys ``"0:kd"``, ``"1:pkd"``.
"""

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from codekd.data.text import shown
from codekd.methods import Method, all_methods, get_method, register
from codekd.models.adapters import NEEDS, ModelShape, Outputs


@register
class Combo(Method):
    name = "combo"
    summary = "weighted sum of other methods' losses: parts=[{method: kd, weight: 1, ...}, ...]"
    defaults = {"parts": []}

    def __init__(self, student: ModelShape, teacher: ModelShape | None = None, **hparams: Any):
        super().__init__(student, teacher, **hparams)
        if not self.hp["parts"]:
            raise ValueError("method 'combo': parts is empty; give a list of {method: NAME, weight: W, ...}")
        self.names: list[str] = []
        self.weights: list[float] = []
        self.parts = nn.ModuleList()
        for i, entry in enumerate(self.hp["parts"]):
            name, weight, options = _parse_part(i, entry)
            try:
                self.parts.append(get_method(name)(student, teacher, **options))
            except ValueError as e:
                raise ValueError(f"combo part {i}: {e}") from e
            self.names.append(name)
            self.weights.append(weight)
        # Instance attributes: the trainer reads the needs from the method it was given.
        self.teacher_needs, self.student_needs = self.needs(self.hp)

    @classmethod
    def needs(cls, hparams: dict[str, Any] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The union of the parts' needs, in the order of `NEEDS`."""
        parts = [_parse_part(i, entry) for i, entry in enumerate(cls.options(hparams or {})["parts"])]
        each = [get_method(name).needs(options) for name, _, options in parts]
        teacher = tuple(n for n in NEEDS if any(n in t for t, _ in each))
        return teacher, tuple(n for n in NEEDS if any(n in s for _, s in each))

    @classmethod
    def options(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Each part's method name, weight and options are checked too."""
        hp = super().options(hparams)
        for i, entry in enumerate(hp["parts"]):
            name, _, options = _parse_part(i, entry)
            try:
                get_method(name).options(options)
            except ValueError as e:
                raise ValueError(f"combo part {i}: {e}") from e
        return hp

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        losses = [part(student, teacher, labels)["loss"] for part in self.parts]
        total = sum(weight * loss for weight, loss in zip(self.weights, losses, strict=True))
        named = {f"{i}:{name}": loss.detach() for i, (name, loss) in enumerate(zip(self.names, losses, strict=True))}
        return {"loss": total, **named}


def _parse_part(i: int, entry: Any) -> tuple[str, float, dict[str, Any]]:
    """Part `i`'s method name, weight (default 1.0) and remaining options, with errors that name the part."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"combo part {i}: expected a mapping {{method: NAME, weight: W, ...}}, got {shown(entry)}")
    options = dict(entry)
    name = options.pop("method", None)
    weight = options.pop("weight", 1.0)
    if name == Combo.name:
        raise ValueError(f"combo part {i}: a combo cannot contain a combo")
    available = [m for m in all_methods() if m != Combo.name]
    if not isinstance(name, str) or name not in available:
        raise ValueError(f"combo part {i}: unknown method {shown(name)}; available: {', '.join(available)}")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
        raise ValueError(f"combo part {i}: weight {shown(weight)} must be a finite number ≥ 0")
    return name, float(weight), options
