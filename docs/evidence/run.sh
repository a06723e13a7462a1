#!/bin/bash
# The evidence study's resumable background runner (issue 12). Each phase runs a frozen copy of main's
# code at the phase's start, under nice -n 19; finished cells are skipped, an interrupted one resumes.
#   setsid nohup docs/evidence/run.sh >> /work/evidence-study/run.log 2>&1 < /dev/null &
# Needs the corpus first: codekd data exception --out /work/evidence-study/corpus, and
# cp /work/evidence-study/corpus/transfer.jsonl /work/evidence-study/corpus-transfer.jsonl
set -u
S=/work/evidence-study
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
phase() {  # phase NAME CONFIG OUT ONLY...
  local name=$1 cfg=$2 out=$3; shift 3
  local sha; sha=$(git -C /work/main rev-parse --short HEAD)
  local code=$S/code-$sha
  if [ ! -d "$code" ]; then mkdir -p "$code.tmp" && git -C /work/main archive HEAD | tar -x -C "$code.tmp" && mv "$code.tmp" "$code"; fi
  echo "=== $(date -u +%FT%TZ) phase $name on main $sha: $*"
  (cd "$code" && PYTHONPATH=$code nice -n 19 /work/main/.venv/bin/python -m codekd study "$cfg" --out "$out" --keep-going "$@")
  echo "=== $(date -u +%FT%TZ) phase $name exit $?"
}
phase claim-a configs/evidence.yaml $S/study --only method=ft,kd_study,kd_hinton
phase sweep configs/evidence-sweep.yaml $S/sweep
phase transfer configs/evidence.yaml $S/study --only method=kd_hinton_transfer
phase feature configs/evidence.yaml $S/study --only method=pkd,ckd,tinybert
phase logit configs/evidence.yaml $S/study --only method=dist,dkd
