"""Benchmark (issue 16): one cached epoch of every method against FT's, in one run, with a torch.profiler
table of each method's top operators.

The teacher is a 6×384 RoBERTa classifier built from a config (random weights: cost does not depend on its
quality), the student roberta-1.5m, the data the shipped exception slice (its 2000 training functions cut to
--train), 512 tokens, batch 32. Every method's teacher needs are cached first (their build times are printed,
outside the epochs); then each method in `codekd methods` trains one epoch from its cache, after a warm-up FT
epoch outside the figures (combo as kd + pkd, weights 1 and 0.5, the README's example). This shared VM's speed
drifts by up to 2× within minutes, so every method's epoch runs between two FT epochs (ft, m1, ft, m2, …, ft)
and its figure is its epoch ÷ the mean of those two; with --repeats R the schedule runs R times and the median
of a method's R ratios is the figure. Then each method runs one more epoch on --profile-train examples under
torch.profiler (not timed).
Hold the CPU lock for the whole run (not part of `make test`):

    flock /tmp/codekd-cpu.lock python bench/methods_cost.py --out bench-out/methods-cost [--train 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from codekd.data import demo_data_dir, get_task
from codekd.encoding import InputSpec
from codekd.methods import Method, all_methods, get_method
from codekd.models.adapters import shape_of
from codekd.models.presets import build_student, student_spec
from codekd.pipeline import CacheOptions, cache_teacher, distill, make_vocab
from codekd.train_config import TrainConfig

HPARAMS = {"combo": {"parts": [{"method": "kd", "weight": 1.0}, {"method": "pkd", "weight": 0.5}]}}


def slice_data(out: Path, train: int) -> Path:
    """The shipped exception slice with its training split cut to `train` functions (dev and test to 64)."""
    out.mkdir(parents=True)
    for split, n in (("train", train), ("dev", 64), ("test", 64)):
        lines = (demo_data_dir() / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    return out


def random_teacher(out: Path, vocab: Path, max_length: int) -> Path:
    """A 6×384 RoBERTa exception classifier with random weights, saved as a codekd teacher directory."""
    tok = AutoTokenizer.from_pretrained(str(vocab))
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(tok), hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
        max_position_embeddings=max_length + 2, pad_token_id=tok.pad_token_id, type_vocab_size=1,
        num_labels=len(get_task("exception").labels)))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    InputSpec("exception", max_length).save(out)
    return out


def built_method(method: str, vocab: Path, teacher: Path, hparams: dict | None = None) -> Method:
    """`method` as `distill` builds it for student roberta-1.5m and `teacher`: what it caches besides the teacher's
    outputs (CKD's relations) and of which layers (MiniLM, TinyBERT) depends on both, and the cache is built
    here, timed, outside the epochs."""
    student = build_student(student_spec("roberta-1.5m", len(AutoTokenizer.from_pretrained(str(vocab)))),
                            len(get_task("exception").labels))
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    return get_method(method)(shape_of(student), shape_of(model), **(hparams or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--profile-train", type=int, default=96, help="examples of the profiled (untimed) epoch")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--top", type=int, default=8, help="operators listed per method")
    ap.add_argument("--methods", default="", help="comma-separated subset (default: every registered method)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the schedule ft, m1, ft, m2, …, ft; a method's figure is its median ratio")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    data = slice_data(args.out / "data", args.train)
    small = slice_data(args.out / "data-profile", args.profile_train)
    vocab = make_vocab("exception", data, 2000, args.out / "vocab", max_length=args.max_length)
    teacher = random_teacher(args.out / "teacher", Path(vocab), args.max_length)
    methods = all_methods()
    names = sorted((m for m in (args.methods.split(",") if args.methods else methods) if m), key=lambda m: m != "ft")
    cache = CacheOptions(root=args.out / "cache", budget_gb=12.0)
    build = {}
    for name in names:
        needs = methods[name].needs(HPARAMS.get(name, {}))[0]
        method = built_method(name, Path(vocab), teacher, HPARAMS.get(name)) if needs else None
        targets, layers = (method.teacher_targets(), method.teacher_layers()) if method else (None, {})
        what = (*needs, *([targets.name] if targets else []), *(f"layers {k} {v}" for k, v in layers.items()))
        if needs and what not in build:
            started = time.perf_counter()
            for where in (data, small):
                cache_teacher(teacher, "exception", where, "train", needs, cache, "fp32", targets=targets,
                              layers=layers)
            build[what] = time.perf_counter() - started
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, teacher_precision="fp32")

    def epoch(name: str, run: str, where: Path) -> float:
        m = distill("exception", where, "roberta-1.5m", vocab, name, args.out / "runs" / run, cfg,
                    teacher=teacher if methods[name].teacher_needs else None, max_length=args.max_length,
                    hparams=HPARAMS.get(name), cache=cache)
        return m["history"][0]["train_seconds"]

    epoch("ft", "warm-up", data)
    others = [name for name in names if name != "ft"]
    runs: dict[str, list[float]] = {name: [] for name in others}
    around: dict[str, list[tuple[float, float]]] = {name: [] for name in others}  # the FT epochs before and after
    for repeat in range(args.repeats):
        before = epoch("ft", f"ft-{repeat}-0", data)
        for k, name in enumerate(others):
            runs[name].append(epoch(name, f"{name}-{repeat}", data))
            after = epoch("ft", f"ft-{repeat}-{k + 1}", data)
            around[name].append((before, after))
            before = after
    ratios = {name: statistics.median(t / ((a + b) / 2) for t, (a, b) in zip(runs[name], around[name], strict=True))
              for name in others}
    tables = {}
    for name in names:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch(name, f"{name}-profiled", small)
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top,
                                                 max_name_column_width=40)
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.train} exception functions, "
          f"{args.max_length} tokens, batch {args.batch_size}, student roberta-1.5m, teacher 6x384 RoBERTa "
          "(cached, fp32 inference, fp16 cache)")
    for needs, s in build.items():
        print(f"cache build ({', '.join(needs)}): {s:.1f} s")
    for name, table in tables.items():
        print(f"\n### {name}: top operators by self CPU time (profiled epoch of {args.profile_train} examples)\n"
              f"{table}")
    print(f"\n| method | cached epoch s | FT epochs before / after s | ÷ their mean (median of {args.repeats}) |"
          "\n|---|---|---|---|")
    for name in others:
        fts = "; ".join(f"{a:.1f} / {b:.1f}" for a, b in around[name])
        print(f"| {name} | {' / '.join(f'{t:.1f}' for t in runs[name])} | {fts} | {ratios[name]:.2f} |")
    (args.out / "methods_cost.json").write_text(json.dumps({"runs": runs, "ft_around": around, "ratios": ratios,
                                                            "cache_build": {",".join(k): v for k, v in build.items()}},
                                                           indent=1))


if __name__ == "__main__":
    main()
