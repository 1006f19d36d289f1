#!/usr/bin/env bash
# Full-size VISA + AGO simulator studies WITHOUT feature caching (every configuration trains the whole
# AGO model from scratch through train_ago.train), for one GPU: sized for < 10 minutes on one H200
# (63 VISA runs + 30 AGO diagnosis runs at STEPS steps, WORKERS processes sharing the device).
#
#   # here (CPU, needs the simulator data and the MiniLM wheel): the carried work folder (~25 MiB)
#   .venv/bin/python -m training.experiments.visa_sim prepare --train D1 D2 --val D3 D4 --work .study_full \
#       --set data.voxel_size=0.8 data.image_scale=0.25     # data generated with occ3d.dims [100, 100, 8]
#   # on the GPU machine, one command (carry .study_full):
#   WORK=.study_full bash training/experiments/gpu_full_study.sh
#
# Environment: WORK (work folder), PY (python, default python3), DEVICE (cuda), STEPS (600),
# WORKERS (8 processes), SEEDS ("0 1 2"), VISA_ONLY / AGO_ONLY (run-name subsets, default all),
# OUT (results + images + markdown, default $WORK/full). Outputs: $OUT/visa-full.jsonl,
# $OUT/ago-full.jsonl, $OUT/visa_full.md, $OUT/ago_full.md, $OUT/img/*.png.
set -euo pipefail
WORK=${WORK:?set WORK to a prepared work folder (visa_sim prepare)}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-600}
WORKERS=${WORKERS:-8}
SEEDS=${SEEDS:-"0 1 2"}
OUT=${OUT:-$WORK/full}
mkdir -p "$OUT/img"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
t0=$(date +%s)
# shellcheck disable=SC2086
$PY -m training.experiments.visa_sim run --work "$WORK" --mode full --steps "$STEPS" --device "$DEVICE" \
    --workers "$WORKERS" --seeds $SEEDS --eval-every 0 --results "$OUT/visa-full.jsonl" \
    ${VISA_ONLY:+--only $VISA_ONLY}
t1=$(date +%s)
pids=()
for ((i = 0; i < WORKERS; i++)); do
  # shellcheck disable=SC2086
  $PY -m training.experiments.ago_sim_experiments diagnose --work "$WORK" --mode full --steps "$STEPS" \
      --device "$DEVICE" --seeds $SEEDS --eval-every 0 --worker "$i/$WORKERS" \
      --results "$OUT/ago-full.w$i.jsonl" ${AGO_ONLY:+--only $AGO_ONLY} &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
cat "$OUT"/ago-full.w*.jsonl > "$OUT/ago-full.jsonl"
rm -f "$OUT"/ago-full.w*.jsonl
t2=$(date +%s)
$PY -m training.experiments.visa_sim report --results "$OUT/visa-full.jsonl" --img "$OUT/img" --md "$OUT/visa_full.md" \
    --note " (full mode, $STEPS steps)"
$PY -m training.experiments.ago_sim_experiments diagnose-report --results "$OUT/ago-full.jsonl" --img "$OUT/img" \
    --md "$OUT/ago_full.md"
echo "WALL visa_s=$((t1 - t0)) ago_s=$((t2 - t1)) total_s=$(($(date +%s) - t0)) rc=$rc"
exit $rc
