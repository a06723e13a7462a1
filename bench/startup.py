"""Start-up cost of the CLI: wall time (median of 5 fresh processes) of the commands that load no model,
and `python -X importtime -c "import codekd"`'s cumulative total.

    flock /tmp/codekd-cpu.lock python bench/startup.py [--tree DIR ...]

Each `--tree` is a codekd source tree put first on PYTHONPATH (default: this one), so a tree from
before a change can be timed in the same run as the current one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["methods"], ["presets"], ["teacher", "--epochs", "x"])


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}


def median_wall(tree: Path, argv: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "codekd", *argv], env=_env(tree), cwd=tree, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_total_s(tree: Path) -> float:
    """The top-level `codekd` entry of -X importtime: cumulative microseconds of the whole import."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import codekd"], env=_env(tree),
                         cwd=tree, capture_output=True, text=True, check=True).stderr
    line = next(ln for ln in err.splitlines() if ln.rstrip().endswith("| codekd"))
    return int(line.split("|")[1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append")
    trees = parser.parse_args().tree or [Path(__file__).resolve().parents[1]]
    print(f"| command | {' | '.join(str(t) for t in trees)} |")
    print(f"|---|{'---|' * len(trees)}")
    print(f"| import codekd (-X importtime) | {' | '.join(f'{import_total_s(t):.2f} s' for t in trees)} |")
    for argv in COMMANDS:
        cells = " | ".join(f"{median_wall(t, argv):.2f} s" for t in trees)
        print(f"| codekd {' '.join(argv)} | {cells} |")


if __name__ == "__main__":
    main()
