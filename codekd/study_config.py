"""Study files: parsing and validation (`load_study`), the grid's `Cell`s, and which cells a run takes.

A cell's key hashes everything that determines its result (see `Cell.config`), so a changed option is a new cell
and an unchanged one is found again on resume. `codekd.study` runs the cells.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codekd.data import Task, demo_data_dir, get_task
from codekd.data.tasks import is_task_file, task_record
from codekd.data.text import load_yaml, shown
from codekd.methods import get_method
from codekd.models import get_preset, student_spec
from codekd.train_config import TrainConfig, check_config, train_options

TOP = ("name", "out", "data", "limit", "max_length", "truncation", "whitespace", "seeds", "teachers", "students",
       "methods", "train", "efficiency", "cache", "vocab_size", "study_compat")
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Cell:
    """One unit of the grid: a teacher fine-tuning (`student` None) or a student run."""

    task: str
    teacher: str | None
    student: str | None
    method: str
    seed: int
    config: dict[str, Any] = field(compare=False, hash=False)

    @property
    def kind(self) -> str:
        return "teacher" if self.student is None else "student"

    @property
    def name(self) -> str:
        parts = [self.task, self.teacher, "teacher"] if self.student is None else \
            [self.task, *([self.teacher] if self.teacher else []), self.student, self.method, f"s{self.seed}"]
        return ".".join(parts)

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.key[:8]}"


@dataclass
class Study:
    """A validated study configuration (see `configs/quick.yaml` for the format)."""

    path: Path
    name: str
    out: Path
    data: dict[str, Path]  # task name -> data directory
    tasks: dict[str, Task]  # task name -> its definition (built in, or from a task file)
    teachers: dict[str, dict[str, Any]]
    students: list[str]
    methods: dict[str, dict[str, Any]]
    seeds: list[int]
    common: dict[str, Any]
    efficiency: dict[str, Any]
    train: dict[str, Any]

    def under(self, *parts: str) -> Path:
        """`out/PARTS`, refused unless it resolves inside the study directory (names are checked on load too)."""
        target = self.out.joinpath(*parts)
        if not target.resolve().is_relative_to(self.out.resolve()):
            raise ValueError(f"{self.path}: {'/'.join(parts)}: resolves outside the study directory {self.out}")
        return target

    def _inputs(self, task: str) -> dict[str, Any]:
        """What every cell of `task` depends on: its data, its limits and the encoding options."""
        return {**task_record(self.tasks[task]), "data": str(self.data[task]), **self.common,
                "limit": self.common["limit"][task]}

    def teacher_cell(self, task: str, name: str) -> Cell:
        t = self.teachers[name]
        train = t["train"]
        config = {"kind": "teacher", **self._inputs(task), "teacher": t, "train": train}
        return Cell(task, name, None, "ft", int(train.get("seed", 42)), config)

    def student_cells(self) -> list[Cell]:
        cells = []
        for task in self.data:
            for student in self.students:
                for name, opts in self.methods.items():
                    method = opts.get("method", name)  # an entry may name a variant of a method
                    needs_teacher = bool(get_method(method).teacher_needs)
                    for teacher in (self.teachers if needs_teacher else [None]):
                        for seed in self.seeds:
                            config = {"kind": "student", **self._inputs(task), "student": student, "method": method,
                                      "seed": seed,
                                      "hparams": opts.get("hparams", {}), "align": opts.get("align", "position"),
                                      "train": {**self.train, **opts.get("train", {}), "seed": seed},
                                      "teacher": None if teacher is None else
                                      {"name": teacher, "key": self.teacher_cell(task, teacher).key},
                                      **({"variant": name} if name != method else {}),
                                      **({"student_options": opts["student"]} if opts.get("student") else {}),
                                      **({"transfer": opts["transfer"]} if opts.get("transfer") else {})}
                            cells.append(Cell(task, teacher, student, name, seed, config))
        return cells


def _fail(path: Path, where: str, what: str) -> None:
    raise ValueError(f"{path}: {where}: {what}")


def _train_options(path: Path, where: str, opts: Any) -> dict[str, Any]:
    if not isinstance(opts, dict):
        _fail(path, where, "expected a mapping of training options (epochs, lr, batch_size, ...)")
    try:
        return train_options(opts, where)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _check_names(path: Path, where: str, names: Any) -> None:
    """Names that become file names in the study directory: letters, digits, `.`, `_`, `-`, never `..`."""
    for name in [names] if isinstance(names, str | int) else names:
        if not isinstance(name, str | int) or not SAFE_NAME.fullmatch(str(name)) or ".." in str(name):
            _fail(path, where, f"{shown(name)}: a name may hold only letters, digits, '.', '_' and '-' (and no '..'): "
                  "it becomes a file name in the study directory")


def resolve_data(value: str) -> Path:
    """`demo` is the exception slice shipped in the package; anything else is a directory."""
    return demo_data_dir() if value == "demo" else Path(value)


def load_study(path: str | Path, out: str | Path | None = None) -> Study:
    """Read and validate a study file; every problem names the file and the option."""
    path = Path(path)
    raw = load_yaml(path)  # bytes, YAML, nesting, numbers: a DataError naming the file and line
    if not isinstance(raw, dict):
        _fail(path, "top level", "expected a mapping")
    unknown = set(raw) - set(TOP)
    if unknown:
        _fail(path, ", ".join(sorted(unknown)), f"unknown option; known: {', '.join(TOP)}")
    for key in ("name", "data", "students", "methods", "seeds"):
        if not raw.get(key):
            _fail(path, key, "missing")
    _check_names(path, "name", raw["name"])
    for key in ("data", "students", "methods", "teachers"):
        if isinstance(raw.get(key), dict | list):  # a task file's task is named by its `name:`, checked below
            _check_names(path, key, [k for k in raw[key] if key != "data" or not is_task_file(k)])
    if not isinstance(raw["data"], dict):
        _fail(path, "data", "expected a mapping of task (a name or a task file FILE.yaml) to data directory")
    data, tasks = {}, {}
    for key, value in raw["data"].items():
        try:
            task = get_task(key)
        except ValueError as e:
            _fail(path, f"data.{key}", str(e))
        _check_names(path, f"data.{key}", task.name)
        if task.name in tasks:
            _fail(path, f"data.{key}", f"a second task named {shown(task.name)}")
        tasks[task.name] = task
        data[task.name] = resolve_data(str(value))
        if not data[task.name].is_dir():
            _fail(path, f"data.{key}", f"{data[task.name]} is not a directory")
    for student in raw["students"]:
        try:
            get_preset(student)
        except ValueError as e:
            _fail(path, "students", str(e))
    methods = {m: (o or {}) for m, o in (raw["methods"].items() if isinstance(raw["methods"], dict)
                                         else ((m, {}) for m in raw["methods"]))}
    for m, opts in methods.items():
        try:
            cls = get_method(opts.get("method", m))
        except ValueError as e:
            _fail(path, f"methods.{m}" if "method" in opts else "methods", str(e))
        if set(opts) - {"hparams", "train", "align", "method", "transfer", "student"}:
            _fail(path, f"methods.{m}", "expected only method, hparams, train, align, transfer and student")
        if "student" in opts:  # the students' dropout in this entry's cells: {attention_dropout: 0}
            if not isinstance(opts["student"], dict):
                _fail(path, f"methods.{m}.student", "expected a mapping of dropout and attention_dropout")
            for student in raw["students"]:
                try:
                    student_spec({"preset": student, **opts["student"]}, 100)
                except ValueError as e:
                    _fail(path, f"methods.{m}.student", f"{student}: {e}")
        if not isinstance(opts.get("hparams", {}), dict):
            _fail(path, f"methods.{m}.hparams", "expected a mapping of the method's options")
        try:
            cls.options(opts.get("hparams", {}))
        except ValueError as e:
            _fail(path, f"methods.{m}.hparams", str(e))
        if opts.get("transfer") is not None:  # unlabelled code for the distillation terms (a path)
            opts["transfer"] = str(resolve_data(str(opts["transfer"])))
        opts["train"] = _train_options(path, f"methods.{m}.train", opts.get("train", {}))
    teachers = raw.get("teachers") or {}
    for name, t in teachers.items():
        if not isinstance(t, dict) or bool(t.get("model")) == bool(t.get("dir")):
            _fail(path, f"teachers.{name}", "give either model: (a Hugging Face encoder to fine-tune) or "
                  "dir: (a fine-tuned codekd teacher directory, per task: {task: DIR})")
        t["train"] = _train_options(path, f"teachers.{name}.train", t.get("train", {}))
    if any(get_method(o.get("method", m)).teacher_needs for m, o in methods.items()) and not teachers:
        _fail(path, "teachers", "the methods need a teacher")
    limit = _limits(path, raw.get("limit") or {}, data)
    efficiency = {"runs": 50, "warmup": 10, "device": "cpu", "threads": None, "isolate": True,
                  **(raw.get("efficiency") or {})}
    if set(efficiency) - {"runs", "warmup", "device", "threads", "isolate"}:
        _fail(path, "efficiency", "expected only runs, warmup, device, threads and isolate")
    common = {"limit": limit, "max_length": int(raw.get("max_length", 512)),
              "truncation": raw.get("truncation", "head"), "whitespace": raw.get("whitespace", "collapse"),
              "vocab_size": raw.get("vocab_size"), "cache": bool(raw.get("cache", True))}
    seeds = [int(s) for s in raw["seeds"]]
    train = _train_options(path, "train", {**({"study_compat": raw["study_compat"]} if "study_compat" in raw else {}),
                                           **(raw.get("train") or {})})
    runs = [("train", train), *((f"methods.{m}.train", {**train, **o["train"]}) for m, o in methods.items()),
            *((f"teachers.{n}.train", t["train"]) for n, t in teachers.items())]
    for where, opts in runs:  # every option's value, checked before any cell runs
        for task in tasks.values():
            try:
                check_config(TrainConfig(**opts), task, machine=False)
            except ValueError as e:
                _fail(path, where, str(e))
    return Study(path, str(raw["name"]), Path(out or raw.get("out") or Path("studies") / str(raw["name"])), data,
                 tasks, teachers, list(raw["students"]), methods, seeds, common, efficiency, train)


def _limits(path: Path, raw: Any, tasks: dict[str, Path]) -> dict[str, dict[str, int]]:
    """`limit: {train: N, ...}` for every task, or `limit: {TASK: {train: N, ...}}` per task."""
    if not isinstance(raw, dict):
        _fail(path, "limit", "expected a mapping")
    per_task = raw if set(raw) <= set(tasks) and raw else {task: raw for task in tasks}
    for task, splits in per_task.items():
        if not isinstance(splits, dict) or set(splits) - {"train", "valid", "test"} or \
                not all(isinstance(v, int) and v > 0 for v in splits.values()):
            _fail(path, "limit" if per_task is not raw else f"limit.{task}",
                  "expected positive record counts for train, valid and/or test")
    return {task: per_task.get(task, {}) for task in tasks}


def parse_shard(value: str | None) -> tuple[int, int]:
    """`i/n` (0 ≤ i < n) → (i, n); None → the whole grid (0, 1)."""
    if value is None:
        return 0, 1
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise ValueError(f"--shard {shown(value)}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {shown(value)}: expected 0 ≤ i < n")
    return i, n


def in_shard(cell: Cell, shard: tuple[int, int]) -> bool:
    return int(cell.key, 16) % shard[1] == shard[0]


def matches(cell: Cell, only: Sequence[str]) -> bool:
    """`--only` filters: `key=glob[,glob]` on task, teacher, student, method, seed or cell; all must hold."""
    fields = {"task": cell.task, "teacher": cell.teacher or "", "student": cell.student or "", "method": cell.method,
              "seed": str(cell.seed), "cell": cell.name}
    for f in only:
        key, eq, globs = f.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"--only {shown(f)}: expected KEY=PATTERN with KEY one of {', '.join(fields)}")
        if not any(fnmatch.fnmatchcase(fields[key], g) for g in globs.split(",")):
            return False
    return True


def plan(study: Study, only: Sequence[str] = (), shard: tuple[int, int] = (0, 1)) -> list[Cell]:
    """The cells this invocation is responsible for: its shard's student cells, after the teachers they need.

    Teacher cells are not sharded: every shard that needs one claims it, and the others wait for it.
    """
    students = [c for c in study.student_cells() if matches(c, only) and in_shard(c, shard)]
    teachers = sorted({(c.task, c.teacher) for c in students if c.teacher})
    return [study.teacher_cell(task, name) for task, name in teachers] + students
