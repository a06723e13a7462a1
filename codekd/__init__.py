"""codekd: knowledge distillation of code-understanding models (Wang et al., arXiv 2508.15423), done right.

The API functions are imported on first use, so `import codekd` (and `codekd --help`) does not load
torch, transformers or accelerate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codekd.pipeline import distill, evaluate_model, make_vocab, train_teacher

__version__ = "0.1.0"
__all__ = ["distill", "evaluate_model", "make_vocab", "train_teacher"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from codekd import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'codekd' has no attribute {name!r}")
