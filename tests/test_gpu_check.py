"""bench/gpu_check.sh --dry-run: the GPU check's every step on the CPU with tiny sizes, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_completes_every_step(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == [] and results["machine"]["dry_run"]
    runs = {r["run"]: r for r in results["runs"]}
    methods = ("ft", "kd", "dist", "pkd", "ckd", "dkd", "tinybert", "minilm")
    expected = {f"{m}-{s}-fp32" for m in methods for s in ("roberta-7m", "gru-7m")} - {"minilm-gru-7m-fp32"}
    assert expected <= set(runs) and "kd, --teacher-device cpu, live teacher" in runs
    for name in expected:
        assert runs[name]["epoch_seconds"] > 0 and runs[name]["examples_per_s"] > 0
        assert runs[name]["non_finite_losses"] == 0
    assert [b["model"] for b in results["bench_model"]] == ["kd-roberta-7m-fp32", "teacher"]
    assert all(b["figures"]["latency_ms"]["p50"] > 0 for b in results["bench_model"])
