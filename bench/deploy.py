"""Benchmark: what shipping a student buys on a CPU, in PyTorch fp32, ONNX fp32 and ONNX int8.

For the teacher and every student directory, per runtime: size on disk, batch-1 latency (p50/p95 over
`--runs` timed runs after `--warmup` untimed ones) on the training example of median token length (with
the model's own tokenizer and `codekd.json`), batch-32 throughput over the test split (the same pass gives
the test headline metric), and ratios to the teacher in PyTorch fp32. torch and ONNX Runtime use the same
number of intra-op threads (`--threads`). `--unixcoder-shaped` adds a randomly initialised 12-layer,
768-wide RoBERTa (vocabulary 51416, UniXcoder's shape) on the teacher's inputs, timed the same way
(metric n/a). ONNX exports are written to a temporary directory. Not part of `make test`.

    python bench/deploy.py --teacher runs/teacher --data data/exception runs/kd-gru-1.5m runs/kd-roberta-7m
    python bench/deploy.py --teacher T --data D --runs 5 --warmup 1 S   # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from codekd.bench import timed
from codekd.data import Example, get_task, load_split
from codekd.encoding import InputSpec, encode, load_tokenizer
from codekd.export import export_model
from codekd.pipeline import size_mb
from codekd.predict import ONNX_FILE, Predictor

UNIXCODER_VOCAB = 51416
RUNTIMES = ("pytorch fp32", "onnx fp32", "onnx int8")


def median_example(predictor: Predictor, examples: list[Example]) -> tuple[Example, int]:
    """The example whose encoded length is the median of `examples`' (as this model encodes them)."""
    lengths = [len(item["input_ids"]) for item in encode(predictor.tokenizer, examples, predictor.spec)]
    i = int(np.argsort(lengths, kind="stable")[len(lengths) // 2])
    return examples[i], lengths[i]


def latency_ms(predictor: Predictor, example: Example, warmup: int, runs: int) -> tuple[float, float]:
    """p50 and p95 of batch-1 forward time in milliseconds (tokenization excluded)."""
    (batch,) = predictor.batches([example], 1)
    times = timed(lambda: predictor.forward(batch), warmup, runs)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def measure(predictor: Predictor, size: float, train: list[Example], test: list[Example], scored: bool,
            args: argparse.Namespace) -> dict[str, Any]:
    """Size, latency, throughput and (if `scored`) the test headline metric of one model in one runtime."""
    example, length = median_example(predictor, train)
    p50, p95 = latency_ms(predictor, example, args.warmup, args.runs)
    predictor.batch_size = 32
    start = time.perf_counter()
    probs = predictor.probs(test)
    throughput = len(test) / (time.perf_counter() - start)
    task = predictor.task
    metric = task.metrics([ex.label for ex in test], probs)[task.headline] if scored else None
    return {"size_mb": size, "median_tokens": length, "p50_ms": p50, "p95_ms": p95, "throughput": throughput,
            "metric": metric}


def bench_model(name: str, model_dir: Path, args: argparse.Namespace, scored: bool = True) -> list[dict[str, Any]]:
    """One row per runtime; the ONNX exports go to a temporary directory."""
    spec = InputSpec.load(model_dir)
    train = load_split(spec.task, args.data, "train", whitespace=spec.whitespace)
    test = load_split(spec.task, args.data, "test", whitespace=spec.whitespace)
    rows = []
    with tempfile.TemporaryDirectory(prefix="codekd-bench-") as tmp:
        dirs = {"pytorch fp32": model_dir, "onnx fp32": Path(tmp) / "fp32", "onnx int8": Path(tmp) / "int8"}
        export_model(model_dir, dirs["onnx fp32"], data=args.data if scored else None)
        export_model(model_dir, dirs["onnx int8"], quantize="int8")
        for runtime, path in dirs.items():
            predictor = Predictor.from_pretrained(path, threads=args.threads)
            size = size_mb(path) if runtime == "pytorch fp32" else (path / ONNX_FILE).stat().st_size / 1e6
            rows.append({"model": name, "runtime": runtime, **measure(predictor, size, train, test, scored, args)})
            print(f"  {name} / {runtime}: done", flush=True)
    return rows


def unixcoder_shaped(teacher_dir: Path, out: Path) -> Path:
    """A random 12x768 RoBERTa classifier (UniXcoder's shape) with the teacher's tokenizer and input spec."""
    spec = InputSpec.load(teacher_dir)
    tok = load_tokenizer(teacher_dir)
    config = RobertaConfig(vocab_size=max(UNIXCODER_VOCAB, len(tok)), hidden_size=768, num_hidden_layers=12,
                           num_attention_heads=12, intermediate_size=3072, max_position_embeddings=spec.max_length + 2,
                           type_vocab_size=1, pad_token_id=tok.pad_token_id,
                           num_labels=len(get_task(spec.task).labels))
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    spec.save(out)
    return out


def table(rows: list[dict[str, Any]], headline: str) -> str:
    """Markdown table; ratios are against the teacher in PyTorch fp32."""
    ref = rows[0]
    lines = [f"| model | runtime | size MB | x smaller | tokens | p50 ms | p95 ms | x faster (p50) | batch-32 ex/s | "
             f"x throughput | test {headline} | retention |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        metric = "n/a" if r["metric"] is None else f"{r['metric']:.4f}"
        retention = "n/a" if r["metric"] is None or not ref["metric"] else f"{100 * r['metric'] / ref['metric']:.1f}%"
        lines.append(f"| {r['model']} | {r['runtime']} | {r['size_mb']:.2f} | {ref['size_mb'] / r['size_mb']:.3g} "
                     f"| {r['median_tokens']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
                     f"| {ref['p50_ms'] / r['p50_ms']:.3g} | {r['throughput']:.1f} "
                     f"| {r['throughput'] / ref['throughput']:.3g} | {metric} | {retention} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", type=Path, nargs="*", help="student model directories")
    ap.add_argument("--teacher", type=Path, required=True, help="teacher model directory (the reference)")
    ap.add_argument("--data", type=Path, required=True, help="data directory: train split for the median length, "
                                                             "test split for throughput and metric")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    ap.add_argument("--runs", type=int, default=100, help="timed batch-1 runs (5 for a smoke test)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed batch-1 runs before timing")
    ap.add_argument("--unixcoder-shaped", action="store_true", help="also time a random 12x768 RoBERTa")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench_model("teacher", args.teacher, args)
    for path in args.students:
        rows += bench_model(path.name, path, args)
    if args.unixcoder_shaped:
        with tempfile.TemporaryDirectory(prefix="codekd-unixcoder-shaped-") as tmp:
            rows += bench_model("unixcoder-shaped (random)", unixcoder_shaped(args.teacher, Path(tmp) / "m"), args,
                                scored=False)
    task = get_task(InputSpec.load(args.teacher).task)
    machine = {"processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
               "ort_intra_op_threads": args.threads, "runs": args.runs, "warmup": args.warmup,
               "versions": {lib: version(lib) for lib in ("torch", "onnxruntime", "transformers")}}
    print(f"\n{task.name}; {json.dumps(machine)}; ratios vs the teacher in PyTorch fp32; latency excludes "
          f"tokenization; throughput over the test split\n")
    print(table(rows, task.headline))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
