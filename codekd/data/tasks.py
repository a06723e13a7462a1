"""The three classification tasks of the study (arXiv 2508.15423) and how each one is scored.

A `Task` fixes the class names (so loaders can turn names into indices and reports can print them),
whether inputs are function pairs, and which metric is the headline number the paper reports:
accuracy for Devign defect detection, F1 of the "clone" class for BigCloneBench, top-1 accuracy for
CuBERT exception classification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# CuBERT's exception classes, in the order of its label vocabulary (index = class id).
EXCEPTION_LABELS = tuple(
    "ValueError KeyError AttributeError TypeError OSError IOError ImportError IndexError DoesNotExist "
    "KeyboardInterrupt StopIteration AssertionError SystemExit RuntimeError HTTPError UnicodeDecodeError "
    "NotImplementedError ValidationError ObjectDoesNotExist NameError".split()
)


@dataclass(frozen=True)
class Task:
    """A classification task: class names in index order, pair inputs or not, and its headline metric."""

    name: str
    labels: tuple[str, ...]
    pair: bool
    headline: str
    focus: str | None = None  # a marker the label depends on (CuBERT's __HOLE__), for `--truncation focus`

    def metrics(self, labels: Sequence[int], probs: np.ndarray) -> dict[str, float]:
        """Score predicted class probabilities `probs` [N, C] against gold class indices `labels` [N].

        Binary tasks get accuracy and precision/recall/F1 of class 1 (the defective / clone class);
        multi-class tasks get accuracy, macro-F1 over all C classes and top-3 accuracy.
        All values are fractions in [0, 1]; `n` is the number of examples.
        """
        # imported here: sklearn costs ~0.6 s, and only scoring needs it (not the CLI's start-up)
        from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, top_k_accuracy_score

        y = np.asarray(labels, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        n_classes = len(self.labels)
        if probs.ndim != 2 or probs.shape != (len(y), n_classes):
            raise ValueError(
                f"task {self.name!r}: probs must have shape ({len(y)}, {n_classes}), got {probs.shape}"
            )
        pred = probs.argmax(axis=1)
        out = {"n": float(len(y)), "accuracy": float(accuracy_score(y, pred))}
        if n_classes == 2:
            p, r, f, _ = precision_recall_fscore_support(
                y, pred, average="binary", pos_label=1, zero_division=0
            )
            out.update(precision=float(p), recall=float(r), f1=float(f))
        else:
            classes = list(range(n_classes))
            out["macro_f1"] = float(f1_score(y, pred, average="macro", labels=classes, zero_division=0))
            out["top3_accuracy"] = float(top_k_accuracy_score(y, probs, k=3, labels=classes))
        return out


TASKS: dict[str, Task] = {
    "defect": Task("defect", ("non-defective", "defective"), pair=False, headline="accuracy"),
    "clone": Task("clone", ("not-clone", "clone"), pair=True, headline="f1"),
    "exception": Task("exception", EXCEPTION_LABELS, pair=False, headline="accuracy", focus="__HOLE__"),
}


def get_task(name: str) -> Task:
    """Look a task up by name; an unknown name is a ValueError that lists the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]
