# Sourced by bench/gpu_check.sh and bench/evidence_gpu.sh: the Python of a GPU machine that brings its own
# torch and transformers and has no network. Sets PY. Unless DRY is set: codekd is installed with
# `pip install --no-deps` into a venv over the system packages ($OUT.venv), or, where venv or an offline
# build is unavailable, run from this tree through PYTHONPATH; missing pure-Python packages come from
# $WHEELS (pip --no-index) when given. Stops (exit 2) naming any package still missing.
PY="${PYTHON:-python3}"
if [ -z "$DRY" ]; then
  if "$PY" -m venv --system-site-packages "$OUT.venv" && "$OUT.venv/bin/python" -m pip install --quiet --no-deps \
      --no-index --no-build-isolation -e .; then
    PY="$OUT.venv/bin/python"
  else
    echo "$0: pip install --no-deps failed; running codekd from $PWD via PYTHONPATH" >&2
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
if [ -n "$missing" ]; then echo "$0: missing Python packages: $missing (give --wheels DIR)" >&2; exit 2; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
