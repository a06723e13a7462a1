#!/bin/bash
# The evidence study's resumable background runner (issue 12). Each phase runs a frozen copy of main's
# code at the phase's start, under nice -n 19; finished cells are skipped, an interrupted one resumes.
#   setsid nohup docs/evidence/run.sh >> /work/evidence-study/run.log 2>&1 < /dev/null &
# Needs the corpus first: codekd data exception --out /work/evidence-study/corpus, and
# cp /work/evidence-study/corpus/transfer.jsonl /work/evidence-study/corpus-transfer.jsonl
set -u
# setsid gives the runner its own autogroup, where nice alone does not yield to other sessions' jobs
echo 19 > /proc/self/autogroup 2>/dev/null || true
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
# done in earlier sittings: claim (a) at lr 1e-3 (ft, kd_study, kd_hinton, both students) and the sweep
R="--only student=roberta-1.5m" G="--only student=gru-1.5m" S3="--only seed=1,2,3"
phase roberta-lr configs/evidence.yaml $S/study $R $S3 --only method=ft_lr5e-4,kd_hinton_lr5e-4
phase gru-b configs/evidence.yaml $S/study $G $S3 --only method=dist,pkd,ckd
phase roberta-b configs/evidence.yaml $S/study $R $S3 --only method=dist_lr5e-4,pkd_lr5e-4,ckd_lr5e-4
# claim (a)'s KD-vs-FT rows at a stable learning rate, seeds 4 and 5 (decided before they ran)
phase claim-a-seeds configs/evidence.yaml $S/study --only seed=4,5 --only method=ft,kd_study,kd_hinton $G
phase gru-rest configs/evidence.yaml $S/study $G $S3 --only method=dkd,tinybert,kd_hinton_transfer
phase roberta-rest configs/evidence.yaml $S/study $R $S3 --only method=dkd_lr5e-4,tinybert_lr5e-4,kd_hinton_transfer_lr5e-4
# last: roberta-1.5m's claim-(a) seeds 4-5 (every method's 3 seeds first; decided before they ran)
phase claim-a-seeds-r configs/evidence.yaml $S/study --only seed=4,5 --only method=ft_lr5e-4,kd_hinton_lr5e-4 $R
# then the feature methods at the sweep's picks (a label term), roberta-1.5m, beside the defaults
phase roberta-label configs/evidence.yaml $S/study $R $S3 --only method=pkd_b1_lr5e-4,ckd_b1_lr5e-4
