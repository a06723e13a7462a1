"""The evidence study's GPU grid (issue 12), driven by `bench/evidence_gpu.sh`: the grid of
configs/evidence.yaml at 512 tokens with roberta-7m and roberta-30m students in bf16 on one CUDA GPU,
inside a time limit.

Steps: build the corpus on that machine (`codekd data exception`: its own standard library and
site-packages, permissive licences only, split by project, with the training projects' unlabelled
functions as the transfer set); write the study file from configs/evidence.yaml (same methods, seeds and
teacher recipe; data, students, length, precision and measurement device changed); run the study phase by
phase, the claims' cells first, each phase under what is left of `--minutes`; then `codekd report` writes
the tables, results.csv and claims.md. Run again with the same --out, a study that the time limit cut
resumes where it stopped (finished cells are skipped).

The teacher is all-MiniLM-L6-v2: `demo-teacher` where its package is installed, else `--teacher DIR`, a
copy made beforehand with `--pack DIR` (fp16 safetensors, about 45 MB, small enough to carry to a machine
without network). `--dry-run` runs every step on the CPU with the shipped exception slice, two methods,
one seed and the smallest student.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PHASES = (("claim-a", "ft,kd_study,kd_hinton"), ("feature", "pkd,ckd,tinybert"),
          ("transfer", "kd_hinton_transfer"), ("logit", "dist,dkd"))
DRY_METHODS = ("ft", "kd_hinton")


def pack(out: Path) -> None:
    """An fp16 copy of the demo's all-MiniLM-L6-v2 (weights and tokenizer) in `out`, to carry."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from codekd.demo import minilm_path

    AutoModel.from_pretrained(minilm_path(), dtype=torch.float16).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)


def study_file(out: Path, teacher: str, data: str, transfer: Path | None, dry: bool) -> Path:
    """The study file of the GPU grid, from configs/evidence.yaml."""
    cfg: dict[str, Any] = yaml.safe_load((REPO / "configs" / "evidence.yaml").read_text(encoding="utf-8"))
    cfg.update(name="evidence-gpu", data={"exception": data}, max_length=64 if dry else 512, seeds=[1, 2, 3],
               students=["roberta-0.6m"] if dry else ["roberta-7m", "roberta-30m"],
               efficiency={"runs": 3, "warmup": 1} if dry else {"runs": 50, "warmup": 10, "device": "cuda"})
    precision = "fp32" if dry else "bf16"
    cfg["teachers"]["minilm"].update(model=teacher)
    cfg["teachers"]["minilm"]["train"].update(precision=precision, **({"epochs": 1} if dry else {}))
    cfg["train"].update(precision=precision, **({"epochs": 1} if dry else {}))
    wanted = DRY_METHODS if dry else [m for _, only in PHASES for m in only.split(",")]
    cfg["methods"] = {m: o for m, o in cfg["methods"].items() if m in wanted}  # not the CPU grid's lr variants
    if dry:
        cfg.update(seeds=[1], limit={"train": 32, "valid": 16, "test": 16})
    elif transfer is not None:
        cfg["methods"]["kd_hinton_transfer"]["transfer"] = str(transfer)
    else:
        del cfg["methods"]["kd_hinton_transfer"]
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def codekd(*args: str, timeout: float | None = None) -> int:
    """`python -m codekd ARGS`, its output shown; the exit status (124 when `timeout` seconds ran out)."""
    try:
        return subprocess.run([sys.executable, "-m", "codekd", *args], timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return 124


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("evidence-gpu-out"))
    ap.add_argument("--teacher", default="demo-teacher", help="all-MiniLM-L6-v2 directory (default: the package's)")
    ap.add_argument("--minutes", type=float, default=11.0, help="time limit of the study's phases together")
    ap.add_argument("--dry-run", action="store_true", help="the CPU path with tiny sizes")
    ap.add_argument("--pack", type=Path, help="only write an fp16 copy of all-MiniLM-L6-v2 to this directory")
    args = ap.parse_args()
    if args.pack:
        return pack(args.pack)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("evidence_gpu: no CUDA device (use --dry-run for the CPU path)")
    deadline = time.monotonic() + 60 * args.minutes
    args.out.mkdir(parents=True, exist_ok=True)
    transfer = None
    if args.dry_run:
        data = "demo"
    else:
        data = str((args.out / "corpus").resolve())
        if not (args.out / "corpus").is_dir() and codekd("data", "exception", "--out", data):
            sys.exit("evidence_gpu: the corpus build failed")
        transfer = (args.out / "transfer.jsonl").resolve()  # outside the data directory, as on the CPU
        if (args.out / "corpus" / "transfer.jsonl").exists():
            shutil.move(args.out / "corpus" / "transfer.jsonl", transfer)
        transfer = transfer if transfer.exists() else None
    config = study_file(args.out, args.teacher, data, transfer, args.dry_run)
    phases = []
    for name, only in PHASES:
        left = deadline - time.monotonic()
        rc = codekd("study", str(config), "--out", str(args.out / "study"), "--keep-going",
                    "--only", f"method={only}", timeout=left) if left > 0 else 124
        phases.append({"phase": name, "methods": only, "rc": rc})
        print(json.dumps(phases[-1]), flush=True)
    rc = codekd("report", str(args.out / "study"), "--out", str(args.out / "report"), "--force")
    (args.out / "phases.json").write_text(json.dumps({"phases": phases, "report_rc": rc}, indent=1))
    claims = args.out / "report" / "claims.md"
    print(claims.read_text(encoding="utf-8") if claims.exists() else "evidence_gpu: no claims.md")
    sys.exit(1 if rc or any(p["rc"] not in (0, 124) for p in phases) else 0)


if __name__ == "__main__":
    main()
