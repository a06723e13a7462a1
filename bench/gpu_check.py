"""The GPU check of issue 16, driven by `bench/gpu_check.sh`: every code path that only a GPU exercises.

A UniXcoder-shaped (12×768, vocabulary 51,416) RoBERTa teacher built from a config is fine-tuned 1 epoch
on the shipped exception slice at 512 tokens in bf16; its outputs are cached; every method is distilled
1 epoch into roberta-7m and gru-7m (MiniLM: RoBERTa only) in bf16 and in fp16 with the grad scaler; KD runs
once more with `--teacher-device cpu` and a CUDA student; `bench-model --device cuda` measures a student
and the teacher. Each run records epoch seconds, training examples/s, peak GPU memory and whether it met
a non-finite loss (training stops at the first one, so the count is 0 or 1), all in one JSON file.
Nothing comes from the hub. `--dry-run` runs the same steps on the CPU with tiny sizes and fp32 only.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer, RobertaConfig, RobertaModel

from codekd.data import demo_data_dir
from codekd.pipeline import CacheOptions, cache_teacher, distill, make_vocab, train_teacher
from codekd.train import NonFiniteLossError, TrainConfig

METHODS = ("ft", "kd", "dist", "pkd", "ckd", "dkd", "tinybert", "minilm")


@dataclass(frozen=True)
class Plan:
    device: str
    train: int
    eval: int
    max_length: int
    teacher: dict[str, int]
    students: dict[str, Any]  # label -> preset name or custom shape
    precisions: tuple[str, ...]
    bench_runs: int


FULL = Plan("cuda", 600, 100, 512, dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                                        intermediate_size=3072, vocab_size=51416),
            {"roberta-7m": "roberta-7m", "gru-7m": "gru-7m"}, ("bf16", "fp16"), 50)
DRY = Plan("cpu", 32, 8, 64, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                   vocab_size=600),
           {"roberta-7m": {"kind": "roberta", "hidden_size": 16, "num_layers": 2, "num_heads": 2,
                           "intermediate_size": 32},
            "gru-7m": {"kind": "gru", "hidden_size": 16, "num_layers": 2}}, ("fp32",), 3)


def _slice(out: Path, plan: Plan) -> Path:
    data = out / "data"
    data.mkdir(parents=True)
    for split, n in (("train", plan.train), ("dev", plan.eval), ("test", plan.eval)):
        lines = (demo_data_dir() / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (data / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    return data


def _measured(record: dict[str, Any], plan: Plan, action) -> dict[str, Any]:
    """Run `action` (returning codekd metrics or None), adding time, throughput, peak memory and failures."""
    cuda = plan.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    record.update(non_finite_losses=0, error=None)
    try:
        metrics = action()
    except NonFiniteLossError as e:
        metrics, record["non_finite_losses"], record["error"] = None, 1, str(e)
    except Exception as e:  # a check reports every failure and goes on to the next run
        metrics, record["error"] = None, f"{type(e).__name__}: {e}"
    record["seconds"] = round(time.perf_counter() - started, 2)
    if metrics and metrics.get("history"):
        epoch = metrics["history"][0]["train_seconds"]
        record.update(epoch_seconds=round(epoch, 2), examples_per_s=round(record["train_examples"] / epoch, 1))
    record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (must not exist); results.json in it")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, fp32")
    args = ap.parse_args()
    plan = DRY if args.dry_run else FULL
    if plan.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --dry-run for the CPU path)")
    args.out.mkdir(parents=True)
    data = _slice(args.out, plan)
    vocab = make_vocab("exception", data, 5000, args.out / "vocab", max_length=plan.max_length)
    cache = CacheOptions(root=args.out / "cache", budget_gb=40.0)
    runs: list[dict[str, Any]] = []
    base = {"train_examples": plan.train, "max_length": plan.max_length}

    init = args.out / "teacher-init"  # random weights from a config: nothing from the hub
    tok = AutoTokenizer.from_pretrained(str(vocab))
    shape = {**plan.teacher, "vocab_size": max(plan.teacher["vocab_size"], len(tok))}
    RobertaModel(RobertaConfig(max_position_embeddings=plan.max_length + 2, pad_token_id=tok.pad_token_id,
                               bos_token_id=0, eos_token_id=2, type_vocab_size=1, **shape)).save_pretrained(init)
    tok.save_pretrained(init)
    teacher = args.out / "teacher"
    t_precision = "bf16" if plan.device == "cuda" else "fp32"
    runs.append(_measured({"run": "teacher fine-tune", "precision": t_precision, **base}, plan, lambda: train_teacher(
        "exception", data, str(init), teacher, TrainConfig(epochs=1, lr=5e-5, precision=t_precision),
        max_length=plan.max_length)))
    if runs[-1]["error"]:
        _finish(args.out, plan, runs, [])
    # the logit methods' and PKD's cache; CKD's relations and MiniLM's and TinyBERT's layers are cached by their
    # first distill, as a user's run would (so those paths run on the GPU too)
    needs = ("logits", "first_token")
    runs.append(_measured({"run": f"teacher cache ({', '.join(needs)})", **base}, plan,
                          lambda: cache_teacher(teacher, "exception", data, "train", needs, cache) and None))

    for precision in plan.precisions:
        for label, student in plan.students.items():
            for method in METHODS:
                if method == "minilm" and label.startswith("gru"):
                    continue
                name = f"{method}-{label}-{precision}"
                cfg = TrainConfig(epochs=1, lr=3e-4, precision=precision)
                runs.append(_measured({"run": name, "method": method, "student": label, "precision": precision,
                                       **base}, plan, lambda m=method, s=student, n=name, c=cfg: distill(
                    "exception", data, s, vocab, m, args.out / n, c, teacher=None if m == "ft" else teacher,
                    max_length=plan.max_length, cache=cache)))
    precision = plan.precisions[0]
    runs.append(_measured({"run": "kd, --teacher-device cpu, live teacher", "method": "kd", "student": "roberta-7m",
                           "precision": precision, **base}, plan, lambda: distill(
        "exception", data, plan.students["roberta-7m"], vocab, "kd", args.out / "kd-teacher-cpu",
        TrainConfig(epochs=1, precision=precision, teacher_device="cpu"), teacher=teacher,
        max_length=plan.max_length, cache=CacheOptions(enabled=False))))

    bench = []
    for model in (args.out / f"kd-roberta-7m-{precision}", teacher):
        if not model.is_dir():
            continue  # its run failed, and says so
        target = args.out / f"bench-{model.name}.json"
        cmd = [sys.executable, "-m", "codekd", "bench-model", str(model), "--data", str(data), "--device", plan.device,
               "--runs", str(plan.bench_runs), "--warmup", str(min(plan.bench_runs, 10)), "--out", str(target)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        bench.append({"model": model.name, "rc": done.returncode,
                      "figures": json.loads(target.read_text()) if target.exists() else None,
                      "error": done.stderr[-2000:] if done.returncode else None})
        print(json.dumps(bench[-1]), flush=True)

    _finish(args.out, plan, runs, bench)


def _finish(out: Path, plan: Plan, runs: list[dict[str, Any]], bench: list[dict[str, Any]]) -> None:
    """Write results.json and exit: status 1 when any run failed."""
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "transformers": transformers.__version__,
               "device": torch.cuda.get_device_name(0) if plan.device == "cuda" else platform.processor(),
               "dry_run": plan.device == "cpu"}
    failed = [r["run"] for r in runs if r["error"]] + [b["model"] for b in bench if b["rc"]]
    (out / "results.json").write_text(json.dumps({"machine": machine, "runs": runs, "bench_model": bench,
                                                      "failed": failed}, indent=2))
    print(f"gpu_check: {len(runs)} runs, {len(bench)} bench-model; failed: {failed or 'none'}; "
          f"results in {out / 'results.json'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
