"""`codekd predict` on large inputs: peak memory (max RSS of the process) and the time to its first output line.

    python bench/predict_stream.py --model RUN_DIR --lines 10000 40000

Each size is a JSONL file of the shipped exception slice's training functions, repeated; `predict` runs as a
child process reading it (`--input`), and its stdout is read line by line as it comes; each size's peak is its
own child's (from `os.wait4`). Hold the CPU lock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codekd.data import demo_data_dir


def run(model: Path, n: int, batch_size: int) -> dict[str, float]:
    functions = (demo_data_dir() / "train.jsonl").read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_text("".join(functions[i % len(functions)] + "\n" for i in range(n)), encoding="utf-8")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "codekd", "predict", "--model", str(model), "--input",
                                 str(path), "--batch-size", str(batch_size)], stdout=subprocess.PIPE, text=True)
        first, count = None, 0
        for line in proc.stdout:
            first = first or time.perf_counter() - start
            count += 1
            json.loads(line)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak (RUSAGE_CHILDREN keeps the largest)
        proc.returncode = os.waitstatus_to_exitcode(status)
        total = time.perf_counter() - start
        if proc.returncode or count != n:
            raise SystemExit(f"predict failed: exit {proc.returncode}, {count} of {n} lines")
    return {"lines": n, "first_line_s": round(first, 2), "total_s": round(total, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--lines", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    for n in sorted(args.lines):
        print(json.dumps(run(args.model, n, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
