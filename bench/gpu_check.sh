#!/usr/bin/env bash
# The GPU check of issue 16 (see bench/gpu_check.py): run on a CUDA machine from the repository root.
#   bash bench/gpu_check.sh [--out DIR] [--wheels DIR] [--dry-run]
# The machine brings its own Python with torch and transformers and has no network (bench/gpu_env.sh:
# codekd with `pip install --no-deps`, missing pure-Python packages from --wheels DIR).
# --dry-run runs the CPU path with tiny sizes (the test suite does), without installing anything.
set -euo pipefail
OUT=gpu-check-out; WHEELS=""; DRY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --dry-run) DRY="--dry-run"; shift ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
. bench/gpu_env.sh
rm -rf "$OUT"
exec "$PY" bench/gpu_check.py --out "$OUT" $DRY
