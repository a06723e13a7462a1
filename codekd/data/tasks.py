"""Classification tasks: what a record's fields are, the class names, and how a task is scored.

A task is defined by a task file (YAML): its input field (or two, for pairs), its label field and
class names in index order, its headline metric (the number that picks the best epoch and that
retention divides), an optional focus marker for `--truncation focus`, and optional other names of
the fields. The study's three tasks (arXiv 2508.15423) ship as such files (`codekd/data/task_files/`):
`defect` (Devign, accuracy), `clone` (BigCloneBench, F1 of the "clone" class) and `exception`
(CuBERT, top-1 accuracy). A bad file is a `DataError` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from codekd.data.text import DataError, parse_yaml, read_text, shown

TASK_FILES = Path(__file__).parent / "task_files"
BUILTIN = ("defect", "clone", "exception")
HEADLINES = ("accuracy", "f1", "macro_f1", "top_k_accuracy")
KEYS = ("name", "input", "label", "labels", "metric", "positive", "k", "focus", "aliases")


class TaskFileError(DataError):
    """A bad task definition, reported as "<path>:<line>: <what is wrong>"."""


@dataclass(frozen=True)
class Task:
    """A classification task: record fields, class names in index order, headline metric, focus marker."""

    name: str
    labels: tuple[str, ...]
    inputs: tuple[str, ...] = ("func",)  # one field, or two for a pair task
    label_field: str = "target"
    metric: str = "accuracy"  # one of HEADLINES
    positive: str | None = None  # the class F1 is computed for (default: the second class of a binary task)
    k: int = 3  # top-k accuracy's k (multi-class tasks)
    focus: str | None = None  # a marker the label depends on (CuBERT's __HOLE__), for `--truncation focus`
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()  # other names a field may have in the records

    @property
    def pair(self) -> bool:
        return len(self.inputs) == 2

    @property
    def headline(self) -> str:
        """The key of the headline metric in `metrics()`'s result."""
        return f"top{self.k}_accuracy" if self.metric == "top_k_accuracy" else self.metric

    def field_names(self, field: str) -> tuple[str, ...]:
        """`field` and the other names it may have in a record, in the order they are looked for."""
        return (field, *dict(self.aliases).get(field, ()))

    def _positive_index(self) -> int | None:
        if self.positive is not None:
            return self.labels.index(self.positive)
        return 1 if len(self.labels) == 2 else None

    def metrics(self, labels: Sequence[int], probs: np.ndarray) -> dict[str, float]:
        """Score predicted class probabilities `probs` [N, C] against gold class indices `labels` [N].

        Every task gets accuracy; binary tasks (and tasks with a `positive` class) precision/recall/F1 of
        that class; multi-class tasks macro-F1 over all C classes and top-k accuracy (k < C).
        All values are fractions in [0, 1]; `n` is the number of examples.
        """
        # imported here: sklearn costs ~0.6 s, and only scoring needs it (not the CLI's start-up)
        from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, top_k_accuracy_score

        y = np.asarray(labels, dtype=np.int64)
        probs = np.asarray(probs, dtype=np.float64)
        n_classes = len(self.labels)
        if probs.ndim != 2 or probs.shape != (len(y), n_classes):
            raise ValueError(
                f"task {shown(self.name)}: probs must have shape ({len(y)}, {n_classes}), got {probs.shape}"
            )
        pred = probs.argmax(axis=1)
        out = {"n": float(len(y)), "accuracy": float(accuracy_score(y, pred))}
        positive = self._positive_index()
        if positive is not None:
            p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[positive], average=None, zero_division=0)
            out.update(precision=float(p[0]), recall=float(r[0]), f1=float(f[0]))
        classes = list(range(n_classes))
        if n_classes > 2 or self.metric == "macro_f1":
            out["macro_f1"] = float(f1_score(y, pred, average="macro", labels=classes, zero_division=0))
        if n_classes > 2 and self.k < n_classes:
            out[f"top{self.k}_accuracy"] = float(top_k_accuracy_score(y, probs, k=self.k, labels=classes))
        return out

    def metric_names(self) -> list[str]:
        """The metrics `metrics()` reports for this task (what `--metric-for-best-model` may name)."""
        n = len(self.labels)
        return [k for k in self.metrics(range(n), np.eye(n)) if k != "n"]

    def to_dict(self) -> dict[str, Any]:
        """The task in the task-file form (recorded in every run directory)."""
        return {"name": self.name, "input": list(self.inputs), "label": self.label_field, "labels": list(self.labels),
                "metric": self.metric, "positive": self.positive, "k": self.k, "focus": self.focus,
                "aliases": {f: list(names) for f, names in self.aliases}}


def _str(value: Any, key: str, fail: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        quote = " (quote it)" if value is not None else ""
        fail(key, f"{key} must be a non-empty string, got {shown(value)}{quote}")
    return value


def _names(value: Any, key: str, fail: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    names = tuple(_str(v, key, fail) for v in items)
    if len(set(names)) != len(names):
        fail(key, f"{key} has a repeated name: {', '.join(names)}")
    return names


def task_from_mapping(values: dict[str, Any], path: str | Path, lines: dict[str, int] | None = None) -> Task:
    """A `Task` from the task-file form, every value checked; `lines` maps keys to their line in `path`."""
    lines = lines or {}

    def fail(key: str | None, what: str) -> None:
        raise TaskFileError(path, what, lines.get(key) if key else lines.get(""))

    unknown = [k for k in values if k not in KEYS]
    if unknown:
        fail(unknown[0], f"unknown key {shown(unknown[0])}; known: {', '.join(KEYS)}")
    for key in ("name", "input", "label", "labels"):
        if values.get(key) is None:
            fail(None, f"missing key {shown(key)} (a task file gives name, input, label, labels and metric)")
    name = _str(values["name"], "name", fail)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        fail("name", f"name {shown(name)}: use letters, digits, '_', '.' and '-' (it names run and study cells)")
    inputs = _names(values["input"], "input", fail)
    if len(inputs) > 2:
        fail("input", f"input: one field, or two for a pair task, got {len(inputs)}")
    label = _str(values["label"], "label", fail)
    if label in inputs:
        fail("label", f"label field {shown(label)} is also an input field")
    if not isinstance(values["labels"], list) or len(values["labels"]) < 2:
        fail("labels", "labels: a list of at least two class names, in index order")
    labels = _names(values["labels"], "labels", fail)
    metric = values.get("metric") or "accuracy"
    if metric not in HEADLINES:
        fail("metric", f"metric {shown(metric)}: expected one of {', '.join(HEADLINES)}")
    positive = values.get("positive")
    if positive is not None and positive not in labels:
        fail("positive", f"positive class {shown(positive)} is not one of the labels ({', '.join(labels)})")
    if metric == "f1" and positive is None and len(labels) != 2:
        fail("metric", "metric f1 of a multi-class task needs `positive:`, the class F1 is computed for")
    k = values.get("k", 3)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        fail("k", f"k must be a positive integer, got {shown(k)}")
    if metric == "top_k_accuracy" and not k < len(labels):
        fail("metric", f"metric top_k_accuracy needs k < the number of classes ({k} ≥ {len(labels)})")
    focus = values.get("focus")
    if focus is not None:
        _str(focus, "focus", fail)
        if len(inputs) == 2:
            fail("focus", "focus works for single-input tasks only")
    raw_aliases = values.get("aliases") or {}
    if not isinstance(raw_aliases, dict):
        fail("aliases", "aliases: a mapping of a field to its other names, e.g. {func: [function]}")
    aliases = []
    for field, names in raw_aliases.items():
        if field not in (*inputs, label):
            fail("aliases", f"aliases: {shown(field)} is neither an input field nor the label field")
        aliases.append((field, _names(names, f"aliases.{field}", fail)))
    return Task(name, labels, inputs, label, metric, positive, k, focus, tuple(aliases))


def load_task_file(path: str | Path) -> Task:
    """Read and check a task file; a problem is a `TaskFileError` naming the file and line."""
    path = Path(path)
    try:
        text = read_text(path)
        parse_yaml(text, path)  # bytes, YAML, nesting, numbers, surrogates; then nodes, for their lines
    except DataError as e:
        raise TaskFileError(path, e.what, e.line) from None
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        raise TaskFileError(path, "expected a mapping of task keys (name, input, label, labels, metric)",
                            root.start_mark.line + 1 if root is not None else None)
    values: dict[str, Any] = {}
    lines = {"": root.start_mark.line + 1}
    constructor = yaml.SafeLoader("")
    for key_node, value_node in root.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if key in values:
            raise TaskFileError(path, f"key {shown(key)} is given twice", line)
        values[key] = constructor.construct_object(value_node, deep=True)
        lines[key] = line
    return task_from_mapping(values, path, lines)


def task_record(task: Task) -> dict[str, Any]:
    """How a run or a study cell records its task: the name, and the definition of a task that is not built in
    (so a built-in task's records are unchanged, and an edited task file makes a new study cell)."""
    return {"task": task.name, **({} if _BUILTIN_TASKS.get(task.name) == task else {"task_def": task.to_dict()})}


def is_task_file(task: str | Path) -> bool:
    """A `--task` value that names a file rather than a built-in task."""
    return isinstance(task, Path) or str(task).endswith((".yaml", ".yml")) or "/" in str(task)


def get_task(task: str | Path | Task) -> Task:
    """A task: a `Task`, a built-in name (defect, clone, exception) or a task file (FILE.yaml).

    An unknown name is a ValueError listing the valid ones; a bad file a `TaskFileError` naming its line.
    """
    if isinstance(task, Task):
        return task
    if str(task) in BUILTIN:
        return _BUILTIN_TASKS[str(task)]
    if is_task_file(task):
        return load_task_file(task)
    raise ValueError(f"unknown task {shown(task)}; valid tasks: {', '.join(BUILTIN)}, or a task file FILE.yaml")


_BUILTIN_TASKS = {name: load_task_file(TASK_FILES / f"{name}.yaml") for name in BUILTIN}
TASKS: dict[str, Task] = dict(_BUILTIN_TASKS)
