"""Distillation methods, one file each, registered by name (torchdistill/mdistiller style).

A method is an `nn.Module` (so it may own trainable pieces such as PKD's projections, which are
optimised with the student and discarded afterwards). It declares what it needs from the teacher
and the student, and its hyperparameters with defaults; `forward` receives the uniform `Outputs`
view of both models plus the labels and returns a dict of named losses whose key "loss" is the
total to minimise. Adding a method is adding a file to this folder: every module here is imported
on first use of the registry.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml
from torch import Tensor, nn

from codekd.data.text import shown
from codekd.models.adapters import ModelShape, Outputs

REGISTRY: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class TeacherTargets:
    """Per-token targets a method derives from a frozen teacher's outputs, which a teacher cache computes once
    and stores in place of the outputs they come from (CKD's relations: a frozen teacher's never change).

    `compute` maps a batch's teacher `Outputs` to (B, N, F) float targets (zero at pads); `name` and `params`
    (with a version of the computation) enter the cache's key; `stored` names what else of the teacher's
    outputs the method reads from the cache. The method then finds them as `Outputs.targets`."""

    name: str
    params: dict[str, Any]
    stored: tuple[str, ...]
    compute: Callable[[Outputs], Tensor]


class Method(nn.Module):
    """Base class: subclass, set the class attributes, implement `forward`, decorate with `register`."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    teacher_needs: ClassVar[tuple[str, ...]] = ("logits",)  # empty: no teacher
    student_needs: ClassVar[tuple[str, ...]] = ("logits",)
    defaults: ClassVar[dict[str, Any]] = {}
    fractions: ClassVar[tuple[str, ...]] = ()  # options that mix two terms as α·A + (1 − α)·B: in [0, 1]

    def __init__(self, student: ModelShape, teacher: ModelShape | None = None, **hparams: Any):
        super().__init__()
        if self.teacher_needs and teacher is None:
            raise ValueError(f"method {self.name!r} needs a teacher (--teacher)")
        self.hp = self.options(hparams)

    @classmethod
    def needs(cls, hparams: dict[str, Any] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(teacher needs, student needs) of the method with these options: what a teacher cache must hold and
        what each model must output. The class attributes are those of the default options; the options are
        checked (`options`), so a caller that takes them from a user refuses a wrong one."""
        cls.options(hparams or {})
        return tuple(cls.teacher_needs), tuple(cls.student_needs)

    @classmethod
    def options(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """The method's options: `hparams` over the defaults, each of the default's type and in range. A study
        file is checked with this before any cell runs; building the method checks the same way."""
        unknown = set(hparams) - set(cls.defaults)
        if unknown:
            known = ", ".join(sorted(cls.defaults)) or "none"
            raise ValueError(f"method {cls.name!r}: unknown option(s) {shown(sorted(unknown))}; known: {known}")
        hp = {**cls.defaults, **{k: _coerce(cls.name, k, cls.defaults[k], v) for k, v in hparams.items()}}
        for key, value in hp.items():
            _check_range(cls.name, key, value, key in cls.fractions)
        return hp

    epoch: int = 1  # the training epoch (1-based), set by the training loop through `set_epoch`

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Tell this method and every method inside it (combo parts) the current epoch, for losses that
        change over training (DKD's warm-up). The loop calls it at the start of each epoch, resumed ones too."""
        for module in self.modules():
            if isinstance(module, Method):
                module.epoch = epoch

    def teacher_cacheable(self) -> bool:
        """Whether cached teacher outputs (zeros at pad positions) give the same loss as a live teacher."""
        return True

    def teacher_targets(self) -> TeacherTargets | None:
        """What a teacher cache should compute once for this method, if anything (default: nothing)."""
        return None

    def teacher_layers(self) -> dict[str, list[int]]:
        """Of the teacher's per-layer outputs (`hidden_states`, `attentions`), the layers this method reads, as
        indices into those tuples (negative ones count from the end). A teacher cache stores only these, and its
        outputs hold None for the others. Empty (default): every layer."""
        return {}

    def student_attention_layers(self) -> list[int] | None:
        """The layers whose attention maps the method reads from the student (negative ones count from the end),
        or None (default) for every layer. The other layers then run attention that returns no maps, which is
        faster; the student's `attentions` hold the read layers' maps only, in order."""
        return None


def _coerce(method: str, key: str, default: Any, value: Any) -> Any:
    """Option values arrive as YAML scalars or strings ("0.5", "true"); give them the default's type."""
    if isinstance(value, str) and isinstance(default, float):
        try:  # YAML reads 1e-4 (no dot) and nan as strings
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, str) and not isinstance(default, str):
        value = yaml.safe_load(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default) and default is not None:
        raise ValueError(f"method {shown(method)}: option {key}={shown(value)} must be a {type(default).__name__}")
    return value


POSITIVE = ("temperature", "eps")  # options that divide: > 0


def _check_range(method: str, key: str, value: Any, fraction: bool) -> None:
    """Every number option (a weight, a temperature, an eps) must be finite and ≥ 0; temperatures and eps > 0;
    mixing coefficients (`fraction`) ≤ 1. Integers (layer numbers, windows) are each method's to check."""
    if not isinstance(value, float):
        return
    if key in POSITIVE:
        ok, need = math.isfinite(value) and value > 0, "a finite number > 0"
    elif fraction:
        ok, need = 0 <= value <= 1, "a number in [0, 1]"
    else:
        ok, need = math.isfinite(value) and value >= 0, "a finite number ≥ 0"
    if not ok:
        raise ValueError(f"method {shown(method)}: option {key}={shown(value)} must be {need}")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under `cls.name`."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`."""
    _discover()
    if name not in REGISTRY:
        raise ValueError(f"--method {shown(name)}: unknown; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def all_methods() -> dict[str, type[Method]]:
    _discover()
    return dict(sorted(REGISTRY.items()))
