"""Benchmark: every distillation method against FT on a CPU-sized exception run.

Same student preset, teacher, data, seed and schedule for every method; prints a Markdown table of the
test metrics (and writes it to OUT/methods.md). Also compares `--align position` with `--align offsets`
for the token-level methods. Not part of `make test`.

    python bench/methods_exception.py --teacher demo-out/teacher --vocab demo-out/vocab \
        --data demo-out/data --out bench-out/methods
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from codekd.pipeline import distill, read_metrics
from codekd.train import TrainConfig

HINTON = {"temperature": 4.0, "alpha": 0.5, "t_squared": True}
# (method, token alignment, options beyond the method's defaults: the study's defaults unless noted)
RUNS = [("ft", "position", {}), ("kd", "position", {}), ("kd", "position", HINTON), ("dist", "position", {}),
        ("dkd", "position", {}), ("pkd", "position", {}), ("ckd", "position", {}), ("ckd", "offsets", {}),
        ("tinybert", "position", {}), ("tinybert", "offsets", {}), ("minilm", "position", {}),
        ("minilm", "offsets", {})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--vocab", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--student", default="roberta-1.5m")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--truncation", default="focus")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=16, seed=args.seed)
    rows = []
    for method, align, options in RUNS:
        label = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        run = args.out / f"{method}-{align}-{len(rows)}"
        if not run.exists():
            distill("exception", args.data, args.student, args.vocab, method, run, cfg,
                    teacher=None if method == "ft" else args.teacher, max_length=args.max_length, align=align,
                    truncation=args.truncation, resume=True, hparams=options)
        m = read_metrics(run)
        rows.append((method, label, align, m["model"]["accuracy"], m["model"]["top3_accuracy"],
                     m["model"]["macro_f1"], m["train_seconds"]))
    teacher = read_metrics(args.teacher)["model"]
    lines = [f"exception, {args.student}, {args.epochs} epochs, lr {args.lr}, max length {args.max_length} "
             f"({args.truncation}), seed {args.seed}; machine: {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads",
             "", "| method | options | align | top-1 | top-3 | macro-F1 | train s |", "|---|---|---|---|---|---|---|",
             f"| teacher | - | - | {100 * teacher['accuracy']:.1f} | {100 * teacher['top3_accuracy']:.1f} | "
             f"{100 * teacher['macro_f1']:.1f} | - |"]
    for method, label, align, acc, top3, f1, secs in rows:
        lines.append(f"| {method} | {label} | {align} | {100 * acc:.1f} | {100 * top3:.1f} | {100 * f1:.1f} | "
                     f"{secs:.0f} |")
    text = "\n".join(lines)
    (args.out / "methods.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
