"""codekd: knowledge distillation of code-understanding models (Wang et al., arXiv 2508.15423), done right."""

import codekd.models  # noqa: F401  (registers the BiGRU student with the transformers Auto classes)
from codekd.pipeline import distill, evaluate_model, make_vocab, train_teacher

__version__ = "0.1.0"
__all__ = ["distill", "evaluate_model", "make_vocab", "train_teacher"]
