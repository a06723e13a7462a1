"""Student models of Wang et al., "An Empirical Study of Knowledge Distillation for Code Understanding
Tasks" (arXiv 2508.15423): the BiGRU student and the eight size presets.

Names are imported on first use, so the presets (shapes, parameter counts) are available without
torch. Importing ``codekd.models.bigru`` registers the ``"bigru"`` model type with the transformers
Auto classes; every codekd code path that builds or loads a model does so first (``build_student``,
``codekd.models.teacher``), and so must user code that calls
``AutoModelForSequenceClassification.from_pretrained`` on a BiGRU student directly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codekd.models.bigru import BiGRUConfig, BiGRUForSequenceClassification, BiGRUOutput
    from codekd.models.presets import (
        PRESETS,
        StudentSpec,
        build_student,
        count_parameters,
        custom_spec,
        get_preset,
        parameter_count,
        preset_table,
        student_spec,
    )

_HOME = {
    "BiGRUConfig": "bigru",
    "BiGRUForSequenceClassification": "bigru",
    "BiGRUOutput": "bigru",
    "PRESETS": "presets",
    "StudentSpec": "presets",
    "build_student": "presets",
    "count_parameters": "presets",
    "custom_spec": "presets",
    "get_preset": "presets",
    "parameter_count": "presets",
    "preset_table": "presets",
    "student_spec": "presets",
}
__all__ = [
    "PRESETS",
    "BiGRUConfig",
    "BiGRUForSequenceClassification",
    "BiGRUOutput",
    "StudentSpec",
    "build_student",
    "count_parameters",
    "custom_spec",
    "get_preset",
    "parameter_count",
    "preset_table",
    "student_spec",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"codekd.models.{_HOME[name]}"), name)
    raise AttributeError(f"module 'codekd.models' has no attribute {name!r}")
