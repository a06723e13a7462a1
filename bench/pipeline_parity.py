"""Pipeline parity on the demo's models: top-1 accuracy on the test split of each run directory, three ways.

- `codekd predict` (codekd's `Predictor`, the run's own preprocessing);
- `transformers.pipeline("text-classification", model=DIR, trust_remote_code=True)` in a fresh Python
  process that cannot import codekd: the directory's registered pipeline (`codekd_pipeline.py`);
- transformers' stock `TextClassificationPipeline` on the same model and tokenizer (truncation on), i.e.
  what a user gets who bypasses the directory's pipeline: the tokenizer's normaliser and `model_max_length`
  apply, the `__HOLE__` focus window does not.

Usage (after `codekd demo`): `python bench/pipeline_parity.py demo-out` (add run names to pick runs; default
the KD and FT students). Prints one JSON object and a Markdown table. Not part of the test suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PLAIN = r"""
import json, sys
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TextClassificationPipeline, pipeline

run_dir, inputs = sys.argv[1], json.load(open(sys.argv[2]))
own = pipeline("text-classification", model=run_dir, trust_remote_code=True)
stock = TextClassificationPipeline(model=AutoModelForSequenceClassification.from_pretrained(run_dir,
                                   trust_remote_code=True), tokenizer=AutoTokenizer.from_pretrained(run_dir))
print("\nRESULT", json.dumps({"pipeline": [r["label"] for r in own(inputs, batch_size=1)],
                             "stock": [r["label"] for r in stock(inputs, batch_size=1, truncation=True)],
                             "codekd_imported": any(m.split(".")[0] == "codekd" for m in sys.modules)}))
"""

RUNS = ("roberta-1.5m-kd", "gru-1.5m-kd", "roberta-1.5m-ft", "gru-1.5m-ft")


def measure(run_dir: Path, data: Path) -> dict[str, float | int | bool]:
    from codekd.data import load_split
    from codekd.predict import Predictor

    examples = load_split("exception", data, "test", whitespace="keep")
    predictor = Predictor.from_pretrained(run_dir)
    gold = [predictor.task.labels[ex.label] for ex in examples]
    codes = [ex.code for ex in examples]
    mine = [r["label"] for r in predictor(codes)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "inputs.json").write_text(json.dumps(codes), encoding="utf-8")
        env = {**os.environ, "HF_MODULES_CACHE": str(Path(tmp) / "modules"), "PYTHONPATH": ""}
        done = subprocess.run([sys.executable, "-c", PLAIN, str(run_dir), str(Path(tmp) / "inputs.json")],
                              capture_output=True, text=True, env=env, cwd=tmp, stdin=subprocess.DEVNULL, check=True)
    plain = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])

    def top1(labels: list[str]) -> float:
        return sum(a == b for a, b in zip(labels, gold, strict=True)) / len(gold)

    return {"n": len(gold), "codekd_top1": top1(mine), "pipeline_top1": top1(plain["pipeline"]),
            "stock_pipeline_top1": top1(plain["stock"]),
            "pipeline_equals_codekd": plain["pipeline"] == mine,
            "pipeline_agreement": sum(a == b for a, b in zip(plain["pipeline"], mine, strict=True)) / len(gold),
            "codekd_imported_by_pipeline": plain["codekd_imported"]}


def main() -> None:
    demo = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")
    runs = sys.argv[2:] or [r for r in RUNS if (demo / r).is_dir()]
    results = {run: measure(demo / run, demo / "data") for run in runs}
    print(json.dumps(results, indent=2))
    print("\n| run | codekd predict | pipeline(DIR, trust_remote_code=True) | identical | stock pipeline |")
    print("|---|---|---|---|---|")
    for run, r in results.items():
        print(f"| {run} | {100 * r['codekd_top1']:.1f} | {100 * r['pipeline_top1']:.1f} | "
              f"{'yes' if r['pipeline_equals_codekd'] else 'no'} ({100 * r['pipeline_agreement']:.1f} %) | "
              f"{100 * r['stock_pipeline_top1']:.1f} |")


if __name__ == "__main__":
    main()
