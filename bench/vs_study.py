"""Benchmark (issue 16): codekd against the study's training loop, same data, teacher and student, for FT, KD
and CKD, over the study's 5-epoch schedule.

The study's loop is written here from ../shared/STUDY.md (BackOnTruck/kd-empirical, §4-5): every input padded
to max_length (512) by the tokenizer, the teacher run at every step (no cache; eval mode for KD with a RoBERTa
student, train mode — dropout on — for CKD, §4.5), AdamW (eps 1e-8, wd 0) with a linear schedule and 10 %
warm-up, no clipping, batch 32 (FT, KD) and 16 (CKD). Its CKD loss is the study's ``ckd/loss.py`` form (explicit
(…, N, 2W+1, H) difference vectors, W = 10, pads included, T = 3, β = γ = 10). The teacher runs under no_grad
(the study's re-assembled teachers are not; that only makes its loop slower), so the study's figures here are,
if anything, fast. codekd runs `distill` with its defaults (length bucketing, teacher cache) at the same
batch sizes; its cache build is timed and counted once in the schedule.

Every step of the study's loop has the same shapes (fixed batch, fixed length), so it is timed over
--study-steps steps after one warm-up step and multiplied by the steps of an epoch; codekd's epoch is timed
whole (one epoch, as its steps differ). Five epochs = 5 × one epoch (+ the cache build for codekd). Training time
only (no evaluation) on both sides. The teacher is a 6×384 RoBERTa with random weights, the student roberta-1.5m.
Hold the CPU lock for the whole run (not part of `make test`):

    flock /tmp/codekd-cpu.lock python bench/vs_study.py --out bench-out/vs-study [--train 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from methods_cost import built_method, random_teacher, slice_data
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from codekd.data import get_task, load_split
from codekd.methods.layermap import layer_map
from codekd.models.presets import build_student, student_spec
from codekd.pipeline import CacheOptions, cache_teacher, distill, make_vocab
from codekd.train_config import TrainConfig

BATCH = {"ft": 32, "kd": 32, "ckd": 16}  # the study's (STUDY.md §5; CKD's params.py)
EPOCHS, WINDOW = 5, 10


def study_relations(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The study's ``cos_dist`` and ``cos_angle`` on (B, L, N, H) (windowed, out-of-range slots zeroed)."""
    n = a.shape[-2]
    if WINDOW < n:
        index = torch.arange(n)[:, None] + torch.arange(-WINDOW, WINDOW + 1)
        keep, index = ((index >= 0) & (index < n))[..., None].to(a.dtype), index.clamp(0, n - 1)
    else:
        index, keep = torch.arange(n).expand(n, n), torch.ones(n, n, 1, dtype=a.dtype)
    unit = F.normalize(a, dim=-1)
    distances = 1 - (unit[..., :, None, :] * unit[..., index, :] * keep).sum(-1)
    diffs = F.normalize((a[..., :, None, :] - a[..., index, :]) * keep, dim=-1)
    return distances, torch.einsum("...nwh,...nzh->...nwz", diffs, diffs)


def study_ckd(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """WR + γ·LTR, padding included, as the study's ``ckd_loss`` (γ = 10)."""
    total = 0
    for weight, (ss, tt) in ((1, (s, t)), (10, (s.transpose(1, 2), t.transpose(1, 2)))):
        (ds, as_), (dt, at) = study_relations(ss), study_relations(tt)
        total = total + weight * (F.mse_loss(ds, dt) + F.mse_loss(as_, at))
    return total


def study_seconds(method: str, data: Path, vocab: Path, teacher_dir: Path, max_length: int, steps: int) -> float:
    """Seconds of one epoch of the study's loop: `steps` timed steps (after one warm-up) × steps per epoch."""
    task = get_task("exception")
    examples = load_split(task, data, "train")
    codes = [ex.code for ex in examples]
    tok_s, tok_t = AutoTokenizer.from_pretrained(str(vocab)), AutoTokenizer.from_pretrained(str(teacher_dir))
    enc_s = tok_s(codes, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    enc_t = tok_t(codes, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    labels = torch.tensor([ex.label for ex in examples])
    torch.manual_seed(0)
    student = build_student(student_spec("roberta-1.5m", len(tok_s)), len(task.labels), max_positions=max_length + 2)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    teacher.train(method == "ckd")
    batch, per_epoch = BATCH[method], -(-len(labels) // BATCH[method])
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-4, eps=1e-8, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * per_epoch * EPOCHS), per_epoch * EPOCHS)
    mapped = [0, *layer_map(4, 6)]
    order = torch.randperm(len(labels)).tolist()
    student.train()
    started = 0.0
    for k in range(steps + 1):
        if k == 1:
            started = time.perf_counter()
        ids = order[k * batch:(k + 1) * batch]
        inputs_s = {"input_ids": enc_s.input_ids[ids], "attention_mask": enc_s.attention_mask[ids]}
        out_s = student(**inputs_s, output_hidden_states=method == "ckd")
        if method == "ft":
            loss = F.cross_entropy(out_s.logits, labels[ids])
        else:
            with torch.no_grad():
                out_t = teacher(input_ids=enc_t.input_ids[ids], attention_mask=enc_t.attention_mask[ids],
                                output_hidden_states=method == "ckd")
            soft = -(F.softmax(out_t.logits / (3 if method == "ckd" else 10), -1)
                     * F.log_softmax(out_s.logits / (3 if method == "ckd" else 10), -1)).sum(-1).mean()
            loss = soft
            if method == "ckd":
                h_s = torch.stack(out_s.hidden_states, 1)
                h_t = torch.stack([out_t.hidden_states[i] for i in mapped], 1)
                loss = 9 * soft + 10 * study_ckd(h_s, h_t)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return (time.perf_counter() - started) / steps * per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--study-steps", type=int, default=6, help="timed steps of the study's loop per method")
    ap.add_argument("--methods", default="ft,kd,ckd")
    ap.add_argument("--student", type=yaml.safe_load, default="roberta-1.5m",
                    help="codekd's student, e.g. '{preset: roberta-1.5m, attention_dropout: 0}'; the study's loop "
                         "always trains roberta-1.5m as the study does (attention dropout 0.1)")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    data = slice_data(args.out / "data", args.train)
    vocab = make_vocab("exception", data, 2000, args.out / "vocab", max_length=args.max_length)
    teacher = random_teacher(args.out / "teacher", Path(vocab), args.max_length)
    cache = CacheOptions(root=args.out / "cache", budget_gb=12.0)
    rows = {}
    for method in args.methods.split(","):
        build = 0.0
        if method != "ft":
            started = time.perf_counter()
            needs = ("logits", "hidden_states") if method == "ckd" else ("logits",)
            built = built_method(method, Path(vocab), teacher)
            cache_teacher(teacher, "exception", data, "train", needs, cache, "fp32", targets=built.teacher_targets(),
                          layers=built.teacher_layers())
            build = time.perf_counter() - started
        cfg = TrainConfig(epochs=1, batch_size=BATCH[method], teacher_precision="fp32")
        m = distill("exception", data, args.student, vocab, method, args.out / "runs" / method, cfg,
                    teacher=None if method == "ft" else teacher, max_length=args.max_length, cache=cache)
        ours = m["history"][0]["train_seconds"]
        theirs = study_seconds(method, data, Path(vocab), teacher, args.max_length, args.study_steps)
        rows[method] = {"codekd_epoch_s": ours, "cache_build_s": build, "study_epoch_s": theirs,
                        "codekd_5_epochs_s": EPOCHS * ours + build, "study_5_epochs_s": EPOCHS * theirs}
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.train} exception functions, "
          f"{args.max_length} tokens, student roberta-1.5m (codekd's: {args.student}), teacher 6x384 RoBERTa; "
          f"study epochs from {args.study_steps} timed steps")
    print("\n| method | batch | study epoch s | codekd epoch s | codekd cache build s | study 5 epochs s "
          "| codekd 5 epochs s | ratio (5 epochs) |\n|---|---|---|---|---|---|---|---|")
    for method, r in rows.items():
        print(f"| {method} | {BATCH[method]} | {r['study_epoch_s']:.1f} | {r['codekd_epoch_s']:.1f} | "
              f"{r['cache_build_s']:.1f} | {r['study_5_epochs_s']:.0f} | {r['codekd_5_epochs_s']:.0f} | "
              f"{r['study_5_epochs_s'] / r['codekd_5_epochs_s']:.1f}× |")
    (args.out / "vs_study.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
