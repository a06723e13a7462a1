"""Student models of Wang et al., "An Empirical Study of Knowledge Distillation for Code Understanding
Tasks" (arXiv 2508.15423): the BiGRU student and the eight size presets.

Importing this package registers the ``"bigru"`` model type with the transformers Auto classes, so
``AutoModelForSequenceClassification.from_pretrained`` can load saved BiGRU students.
"""

from codekd.models.bigru import BiGRUConfig, BiGRUForSequenceClassification, BiGRUOutput
from codekd.models.presets import (
    PRESETS,
    StudentSpec,
    build_student,
    count_parameters,
    custom_spec,
    get_preset,
    preset_table,
)

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
    "preset_table",
]
