"""`codekd study CONFIG.yaml`: the study's grid (tasks × teachers × students × methods × seeds), resumable.

Every cell goes through the same code path as `codekd teacher` / `codekd distill` (so teachers are
fine-tuned once and reused, and teacher outputs are cached), then its model is measured by
`codekd.bench.measure_efficiency`. One JSON record per cell is appended atomically (the file is
rewritten to a temporary sibling and renamed) to `STUDY/results.jsonl`, or to
`STUDY/results-<i>of<n>.jsonl` for `--shard i/n`; `codekd report` reads them all.

Resuming: a cell whose key (a hash of everything that determines its result) has a record is
skipped; an interrupted cell resumes from its checkpoint in `runs/<cell>-<key>.partial/`. Cells are
claimed by an exclusive-create claim file before they run, so two shards on one shared directory
never run the same cell; a rerun of the same shard takes its own claims back.

A FT cell does not depend on a teacher: it runs once per (task, student, seed) and its record has
`"teacher": null`; the report compares it with every teacher.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from codekd.data import DataError, Task, load_split
from codekd.data.readers import _NAMES
from codekd.data.text import copy_head, parse_json, read_text, shown, text_lines
from codekd.io import atomic_dir, atomic_write_text, process_alive
from codekd.models import get_preset
from codekd.study_config import Cell, Study, load_study, parse_shard, plan
from codekd.train import TrainConfig, console

RESULTS = "results.jsonl"
DEMO_TEACHER = "demo-teacher"  # config alias of the all-MiniLM-L6-v2 weights shipped for the demo
# --dry-run's rate before a study has finished cells: the quick study's 13 cells on this project's 2-core build
# machine ran at 125 GFLOP/s of the estimate overall (single cells 35-173: the estimate is rough)
DEFAULT_GFLOPS = 125.0


def results_file(study_dir: Path, shard: tuple[int, int]) -> Path:
    return study_dir / (RESULTS if shard == (0, 1) else f"results-{shard[0]}of{shard[1]}.jsonl")


def read_results(study_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a study directory (`results*.jsonl`, in file order). A line that is not a complete JSON
    record — a damaged or hand-edited file — or a second record of one cell (a copied line or file, which the
    report would count twice) is a `DataError` naming the file and line, never skipped."""
    records, seen = [], {}
    for path in sorted(Path(study_dir).glob("results*.jsonl")):
        for n, line in text_lines(path):
            try:
                rec = parse_json(line, path, n)
            except DataError as e:
                raise DataError(path, f"not a complete JSON record ({e.what}); the file was damaged — delete this "
                                "line and rerun the study to redo its cell", n) from None
            if not (isinstance(rec, dict) and {"key", "cell", "kind", "metrics"} <= set(rec)
                    and isinstance(rec["key"], str) and isinstance(rec["metrics"], dict)):
                raise DataError(path, "not a codekd study record (needs key, cell, kind, metrics)", n)
            if rec["key"] in seen:
                raise DataError(path, f"a second record of cell {shown(rec['cell'])} (its first is at "
                                f"{seen[rec['key']]}); delete one of them", n)
            seen[rec["key"]] = f"{path}:{n}"
            records.append(rec)
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record: the file is rewritten with the new line and renamed, so it is never half-written."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


def claim(study_dir: Path, cell: Cell, owner: str) -> bool:
    """Take `cell` for `owner` (a shard) by creating its claim file exclusively; True if it is ours.

    A claim by the same owner from a process that is no longer running (a killed rerun) is taken back.
    """
    path = study_dir / "claims" / f"{cell.dir_name}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError):  # a bad byte is a UnicodeDecodeError, a ValueError
            return False  # being written by its owner this instant
        if not isinstance(held, dict) or held.get("owner") != owner:
            return False
        if held.get("pid") != os.getpid() and process_alive(held.get("host"), held.get("pid")):
            return False
        atomic_write_text(path, json.dumps(mine))
        return True
    with os.fdopen(fd, "w") as f:
        json.dump(mine, f)
    return True


def _data_for(study: Study, task: str) -> Path:
    """The task's data directory, or its first `limit` records per split (copied once into the study)."""
    limit = study.common["limit"][task]
    if not limit:
        return study.data[task]
    path = study.under("data", task)

    def copy() -> None:
        with atomic_dir(path) as tmp:
            for f in (f for f in study.data[task].iterdir() if f.is_file()):
                split = next((s for s, names in _NAMES.items() if f.name.split(".")[0] in names), None)
                if split in limit:
                    copy_head(f, tmp / f.name, limit[split])
                else:
                    shutil.copy2(f, tmp / f.name)

    return _build_once(path, copy)


def _wait_for(path: Path, what: str, poll: float = 10.0) -> None:
    """Block until another shard has built `path` (outputs appear by an atomic rename)."""
    console.print(f"waiting for {what} ({path}), which another shard is building")
    while not path.exists():
        time.sleep(poll)


def _build_once(path: Path, build: Any) -> Path:
    """Build a cheap shared output unless it exists; when another shard wins the race, use theirs."""
    if not path.exists():
        try:
            build()
        except OSError:
            if not path.exists():
                raise
    return path


def _vocab(study: Study, task: str, student: str) -> Path:
    from codekd.pipeline import make_vocab

    size = study.common["vocab_size"] or get_preset(student).vocab_size
    path = study.under("vocab", f"{task}-{size}")
    return _build_once(path, lambda: make_vocab(study.tasks[task], _data_for(study, task), size, path,
                                                study.common["max_length"], study.common["whitespace"]))


def _teacher_dir(study: Study, cell: Cell) -> Path:
    t = study.teachers[cell.teacher]
    if t.get("dir"):
        d = t["dir"]
        return Path(d[cell.task] if isinstance(d, dict) else d)
    return study.under("teachers", cell.dir_name)


def run_cell(study: Study, cell: Cell) -> dict[str, Any]:
    """Train (or resume) one cell, measure its model, and return its record."""
    from codekd.bench import measure_efficiency
    from codekd.pipeline import CacheOptions, distill, evaluate_model, read_metrics, train_teacher
    from codekd.rundir import environment

    started = time.perf_counter()
    data = _data_for(study, cell.task)
    c, task = study.common, study.tasks[cell.task]
    if cell.kind == "teacher":
        run_dir = _teacher_dir(study, cell)
        if not run_dir.exists():
            t = study.teachers[cell.teacher]
            train_teacher(task, data, _model_source(t["model"]), run_dir, TrainConfig(**cell.config["train"]),
                          c["max_length"], c["whitespace"], resume=True, truncation=c["truncation"])
    else:
        run_dir = study.under("runs", cell.dir_name)
        if not run_dir.exists():
            teacher = None
            if cell.teacher:
                tcell = study.teacher_cell(cell.task, cell.teacher)
                teacher = _teacher_dir(study, tcell)
                if not teacher.exists():
                    _wait_for(teacher, f"teacher {cell.teacher} on {cell.task}")
            student = {"preset": cell.student, **cell.config["student_options"]} \
                if "student_options" in cell.config else cell.student
            distill(task, data, student, _vocab(study, cell.task, cell.student), cell.config["method"],
                    run_dir, TrainConfig(**cell.config["train"]), teacher=teacher, max_length=c["max_length"],
                    whitespace=c["whitespace"], hparams=cell.config["hparams"], resume=True,
                    align=cell.config["align"], truncation=c["truncation"], cache=CacheOptions(enabled=c["cache"]),
                    transfer=cell.config.get("transfer"))
    m = read_metrics(run_dir)
    if cell.kind == "teacher":  # a `dir:` teacher was tested on its own data: test it on this study's split
        out = study.under("evals", f"{cell.dir_name}.json")
        out.parent.mkdir(exist_ok=True)
        m["model"] = evaluate_model(task, data, run_dir, out=out, force=True)["metrics"]
    eff = measure_efficiency(run_dir, data, **study.efficiency)
    return {"kind": cell.kind, "cell": cell.name, "key": cell.key, "task": cell.task,
            "headline": task.headline, "teacher": cell.teacher, "student": cell.student,
            "method": cell.method, "seed": cell.seed, "metrics": m["model"], "teacher_metrics": m["teacher"],
            "retention": m["retention"],
            "parameters": m["parameters"], "size_mb": m["size_mb"], "efficiency": eff,
            "wall_seconds": time.perf_counter() - started, "train_seconds": m["train_seconds"],
            "best_epoch": m["best_epoch"], "run_dir": str(run_dir.relative_to(study.out))
            if run_dir.is_relative_to(study.out) else str(run_dir),
            "config": cell.config, "environment": environment(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _model_source(model: str) -> str:
    """A teacher's `model:` option: a hub id or directory, or `demo-teacher` (the demo's all-MiniLM-L6-v2)."""
    from codekd.demo import minilm_path

    return minilm_path() if model == DEMO_TEACHER else model


@functools.cache
def _split_size(task: Task, data: Path, split: str) -> int:
    return len(load_split(task, data, split, whitespace="keep"))


@functools.cache
def _student_params(student: str, labels: int, tokens: int) -> int:
    """A preset's parameter count, built on the meta device (no memory, no initialisation)."""
    import torch

    from codekd.models import count_parameters
    from codekd.models.presets import build_student

    with torch.device("meta"):
        return count_parameters(build_student(get_preset(student), labels, max_positions=tokens + 2))


@functools.cache
def _config_params(source: str) -> int | None:
    """A Hugging Face encoder's parameter count from its config alone; None if the config cannot be read."""
    import torch
    from transformers import AutoConfig, AutoModel

    from codekd.trust import from_pretrained

    try:
        config = from_pretrained(AutoConfig, source)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _teacher_params(study: Study, cell: Cell) -> int | None:
    t = study.teachers[cell.teacher]
    return _config_params(str(_teacher_dir(study, cell)) if t.get("dir") else _model_source(t["model"]))


def estimate_seconds(study: Study, cell: Cell, gflops: float) -> float | None:
    """A rough cost: 6·params·tokens FLOPs per trained example-token (+ 2·params·tokens per teacher forward).

    The parameter counts and split sizes are computed once per study listing, not once per cell."""
    tokens = study.common["max_length"]
    train = {**asdict(TrainConfig()), **cell.config["train"]}
    task = study.tasks[cell.task]
    n = study.common["limit"][cell.task].get("train") or _split_size(task, study.data[cell.task], "train")
    if cell.kind == "teacher":
        if study.teachers[cell.teacher].get("dir"):
            return 0.0
        params = _teacher_params(study, cell)
        return None if params is None else 6 * params * tokens * n * train["epochs"] / (gflops * 1e9)
    flops = 6 * _student_params(cell.student, len(task.labels), tokens) * tokens * n * train["epochs"]
    if cell.teacher:
        teacher = _teacher_params(study, study.teacher_cell(cell.task, cell.teacher))
        if teacher is None:
            return None
        flops += 2 * teacher * tokens * n
    return flops / (gflops * 1e9)


def run_study(config: str | Path, out: str | Path | None = None, only: Sequence[str] = (), dry_run: bool = False,
              shard: str | None = None, keep_going: bool = False) -> list[dict[str, Any]]:
    """Run (or resume, or with `dry_run` only list) the study's cells; returns the records of this shard's cells.

    A cell that fails stops the study, unless `keep_going`: then the other cells run (not those whose teacher
    failed) and a ValueError at the end lists the failures. A failed cell has no record, so a rerun retries it.
    """
    study = load_study(config, out)
    part = parse_shard(shard)
    owner = f"{part[0]}of{part[1]}"
    cells = plan(study, only, part)
    records = {r["key"]: r for r in read_results(study.out)} if study.out.exists() else {}
    if dry_run:
        _print_plan(study, cells, records)
        return [records[c.key] for c in cells if c.key in records]
    study.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study.out / "study.yaml", read_text(Path(config)))
    target = results_file(study.out, part)
    skipped: list[str] = []
    failed: dict[str, str] = {}
    for i, cell in enumerate(cells, 1):
        if cell.key in records:
            continue
        if not claim(study.out, cell, owner):
            skipped.append(cell.name)
            continue
        console.rule(f"[{i}/{len(cells)}] {cell.name}")
        teacher = cell.config["teacher"]
        if cell.kind == "student" and teacher and teacher["key"] in failed:
            failed[cell.key] = f"{cell.name}: its teacher cell failed"
            continue
        try:
            record = run_cell(study, cell)
        except Exception as e:
            if not keep_going:
                raise
            failed[cell.key] = f"{cell.name}: {type(e).__name__}: {e}"
            console.print(f"[bold red]failed:[/] {failed[cell.key]}", highlight=False)
            continue
        append_record(target, record)
        records[cell.key] = record
    records = {r["key"]: r for r in read_results(study.out)}
    skipped = [name for name in skipped if name not in {r["cell"] for r in records.values()}]
    if skipped:
        console.print(f"{len(skipped)} cell(s) are claimed by another shard and have no record yet: "
                      f"{', '.join(skipped)}. If that shard is dead, delete their files in {study.out / 'claims'}.")
    if failed:
        raise ValueError(f"{len(failed)} cell(s) failed (no record; a rerun retries them): "
                         + "; ".join(failed.values()))
    return [records[c.key] for c in cells if c.key in records]


def _print_plan(study: Study, cells: list[Cell], records: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    done = [r for r in records.values() if r.get("wall_seconds")]
    spent = sum(r["wall_seconds"] for r in done)
    keys = {r["key"] for r in done}
    cells_done = [c for c in cells if c.key in keys]
    gflops = DEFAULT_GFLOPS
    if cells_done and spent:
        gflops = sum(estimate_seconds(study, c, 1.0) for c in cells_done) / spent
    table = Table(title=f"study {study.name}: {len(cells)} cells in {study.out}")
    for col in ("cell", "key", "status", "est. train"):
        table.add_column(col)
    estimates = {c.key: None if c.key in records else estimate_seconds(study, c, gflops) for c in cells}
    for c in cells:
        est = estimates[c.key]
        table.add_row(c.name, c.key, "done" if c.key in records else "to run",
                      "-" if c.key in records else "? (teacher config not found)" if est is None else _duration(est))
    console.print(table)
    todo = [c for c in cells if c.key not in records]
    unknown = sum(estimates[c.key] is None for c in todo)
    console.print(f"to run: {len(todo)} cells, about {_duration(sum(estimates[c.key] or 0 for c in todo))}"
                  f"{f' plus {unknown} cells of unknown cost' if unknown else ''} (rough: 6·params·tokens FLOPs per "
                  f"training example at {gflops:.0f} GFLOP/s, "
                  f"{'calibrated on this study' if cells_done else 'the quick study on a 2-core CPU'})")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
