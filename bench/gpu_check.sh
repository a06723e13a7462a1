#!/usr/bin/env bash
# The GPU check of issue 16 (see bench/gpu_check.py): run on a CUDA machine from the repository root.
#   bash bench/gpu_check.sh [--out DIR] [--wheels DIR] [--dry-run]
# The machine brings its own Python with torch and transformers and has no network: codekd is installed
# with `pip install --no-deps` (into a venv that sees the system packages); other missing pure-Python
# packages are installed from --wheels DIR (pip --no-index) when given, else listed, and the check stops.
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
PY="${PYTHON:-python3}"
if [ -z "$DRY" ]; then
  # a venv over the system packages; where venv or an offline build (setuptools) is unavailable, codekd is
  # run from this tree through PYTHONPATH instead
  if "$PY" -m venv --system-site-packages "$OUT.venv" && "$OUT.venv/bin/python" -m pip install --quiet --no-deps \
      --no-index --no-build-isolation -e .; then
    PY="$OUT.venv/bin/python"
  else
    echo "gpu_check.sh: pip install --no-deps failed; running codekd from $PWD via PYTHONPATH" >&2
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if [ -n "$WHEELS" ]; then "$PY" -m pip install --quiet --no-deps --no-index "$WHEELS"/*.whl; fi
fi
missing=$("$PY" - <<'PY'
import importlib.util
mods = ["torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy", "yaml", "typer", "rich", "sklearn"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then echo "gpu_check.sh: missing Python packages: $missing (give --wheels DIR)" >&2; exit 2; fi
rm -rf "$OUT"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 exec "$PY" bench/gpu_check.py --out "$OUT" $DRY
