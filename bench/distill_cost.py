"""Benchmark: what distillation costs with codekd's teacher cache and length bucketing (issue 4).

On a fixed real slice (the shipped exception data), the same teacher (all-MiniLM-L6-v2 with a task
head) and the same student, it measures one training epoch of FT, KD with the live teacher, and KD,
DIST and PKD from the teacher cache (ratios to FT, all in this one run); the teacher-cache build time
and size; and the fraction of padded tokens with length bucketing vs padding every input to 512.
Not part of `make test`:

    python bench/distill_cost.py --out bench-out/cost [--train 1000] [--max-length 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from codekd.data import demo_data_dir, get_task, load_split
from codekd.demo import minilm_path
from codekd.encoding import InputSpec, batch_order, encode_view
from codekd.methods import get_method
from codekd.models.teacher import load_pretrained_encoder
from codekd.pipeline import CacheOptions, cache_teacher, distill, make_vocab
from codekd.train import TrainConfig


def pad_tokens(lengths: list[int], batches: list[list[int]] | None, width: int | None = None) -> int:
    """Pad tokens when each batch is padded to its longest member (or every input to `width`)."""
    slots = len(lengths) * width if width is not None else sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return slots - sum(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=1000, help="training examples used")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--student", default="roberta-1.5m")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    data = args.out / "data"
    data.mkdir(parents=True)
    src = demo_data_dir()
    for split, n in (("train", args.train), ("dev", 100), ("test", 100)):
        lines = (src / f"{split}.jsonl").read_text().splitlines(keepends=True)[:n]
        (data / f"{split}.jsonl").write_text("".join(lines))

    # the teacher: real pre-trained MiniLM with a (not fine-tuned) task head: cost does not depend on its quality
    teacher = args.out / "teacher"
    model, tok = load_pretrained_encoder(minilm_path(), get_task("exception"))
    model.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    InputSpec("exception", args.max_length).save(teacher)
    vocab = make_vocab("exception", data, 2000, args.out / "vocab", max_length=args.max_length)

    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=args.batch_size)
    cache_root = args.out / "cache"
    results: dict[str, dict] = {}

    def epoch(name: str, method: str, cached: bool) -> None:
        m = distill("exception", data, args.student, vocab, method, args.out / name, cfg,
                    teacher=None if method == "ft" else teacher, max_length=args.max_length,
                    cache=CacheOptions(enabled=cached, root=cache_root))
        results[name] = {"epoch_seconds": m["history"][0]["train_seconds"]}

    builds = {}
    for method in ("kd", "pkd"):
        started = time.perf_counter()
        cache = cache_teacher(teacher, "exception", data, "train", get_method(method).teacher_needs,
                              CacheOptions(root=cache_root))
        size = sum(f.stat().st_size for f in cache.path.iterdir())
        builds[method] = {"seconds": time.perf_counter() - started, "mb": size / 1e6, "needs": list(cache.needs)}

    epoch("warm-up", "ft", cached=False)  # first-run costs (allocator, thread pools) stay out of the figures
    del results["warm-up"]
    epoch("ft", "ft", cached=False)
    epoch("kd-live", "kd", cached=False)
    epoch("kd-cached", "kd", cached=True)
    epoch("dist-cached", "dist", cached=True)
    epoch("pkd-cached", "pkd", cached=True)
    ft = results["ft"]["epoch_seconds"]
    for r in results.values():
        r["ratio_to_ft"] = r["epoch_seconds"] / ft

    examples = load_split("exception", data, "train")
    student_lengths = [len(x["input_ids"]) for x in encode_view(vocab, examples, InputSpec("exception", 512))[0]]
    padding = {
        "pad_to_512": pad_tokens(student_lengths, None, 512),
        "dynamic_random_batches": pad_tokens(student_lengths, batch_order(student_lengths, args.batch_size, 0, 1,
                                                                          shuffle=True)),
        "dynamic_bucketed": pad_tokens(student_lengths, batch_order(student_lengths, args.batch_size, 0, 1,
                                                                    shuffle=True, bucket=True)),
    }
    real = sum(student_lengths)
    machine = {"processor": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
               "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    report = {"machine": machine, "train_examples": args.train, "max_length": args.max_length,
              "student": args.student, "batch_size": args.batch_size, "epochs": results, "cache_builds": builds,
              "padding_at_512": padding}
    (args.out / "cost.json").write_text(json.dumps(report, indent=2))

    print(f"machine: {machine}; {args.train} exception training examples, max length {args.max_length}, "
          f"student {args.student}, teacher all-MiniLM-L6-v2, batch {args.batch_size}")
    print("\n| run | epoch s | ÷ FT epoch |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['epoch_seconds']:.1f} | {r['ratio_to_ft']:.2f} |")
    print("\n| teacher cache for | build s | size MB | holds |\n|---|---|---|---|")
    for method, b in builds.items():
        print(f"| {method} | {b['seconds']:.1f} | {b['mb']:.2f} | {', '.join(b['needs'])} |")
    print(f"\n| batching (student tokens, cap 512; {real} real tokens) | pad tokens | padded share |\n|---|---|---|")
    for name, v in padding.items():
        print(f"| {name} | {v} | {100 * v / (v + real):.1f}% |")
    print(f"\npad-to-512 pads {padding['pad_to_512'] / max(padding['dynamic_bucketed'], 1):.0f}x as many tokens "
          "as bucketed batches")


if __name__ == "__main__":
    main()
