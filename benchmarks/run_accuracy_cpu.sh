#!/usr/bin/env bash
# The CPU accuracy comparison of benchmarks/RESULTS.md, end to end:
#   * per family (leaves 128 px, neural cells 256 px, nuclei 192 px): ours, ours w/o refine,
#     Mask R-CNN and PointRend (configs/tiny/*: ResNet-18, same width), 1000 iterations from scratch;
#   * the paper's Table II sampling ablation (configs/ablation/sampling/*) on leaves;
#   * the fast variant (configs/fast/objguided_R18_fast_cpu.yaml) on leaves (its accuracy cost);
#   * ours trained with the baselines' SGD solver on leaves (optimizer fairness).
# Every method gets the same budget within a family, seed 0, one torch thread, the same score
# threshold for AP (0.05, the baselines' default; ours' paper default is 0.3) and the same
# schedule (x0.1 at iteration 800).
#
# Usage: benchmarks/run_accuracy_cpu.sh [OUT_DIR] [JOBS]
#   OUT_DIR  default out/accuracy_cpu; finished runs there are reused (tools/compare.py).
#   JOBS     trainings run at once (default 2: one per core of a 2-core machine).
# Wall time on a 2-core machine with JOBS=2: about 2.5 hours (each training 7-15 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/accuracy_cpu}
JOBS=${2:-2}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"

spec() {
  case $1 in
    leaves128) echo 'leaves128=synthetic:leaves?image_size=128&num_train=100&num_val=10&num_test=30' ;;
    neural256) echo 'neural256=synthetic:neural?image_size=256&num_train=100&num_val=10&num_test=30' ;;
    nuclei192) echo 'nuclei192=synthetic:nuclei?image_size=192&num_train=100&num_val=10&num_test=30' ;;
  esac
}
budget() {
  case $1 in
    leaves128) echo '--iters 1000 --batch 4 --input-size 128' ;;
    neural256) echo '--iters 1000 --batch 2 --input-size 256' ;;
    nuclei192) echo '--iters 1000 --batch 2 --input-size 192' ;;
  esac
}
# compare FAMILY CONFIG... : train/evaluate (or reuse) into $OUT/FAMILY and write the report there.
compare() {
  local fam=$1; shift
  # shellcheck disable=SC2046
  "$PY" tools/compare.py --dataset "$(spec "$fam")" --dataset-name "$fam" $(budget "$fam") --threads 1 \
    --output "$OUT/$fam" --configs "$@" \
    --opts MODEL.OBJGUIDED.SCORE_THRESH_TEST 0.05 SOLVER.STEPS "(800,)"
}

T=configs/tiny
A=configs/ablation/sampling
FOUR="$T/objguided_R18_tiny.yaml $T/objguided_R18_tiny_norefine.yaml $T/mask_rcnn_R18_tiny.yaml $T/pointrend_R18_tiny.yaml"
# The Table II configs, in the paper's order: the list of the ablation-sampling preset.
ABLATION=$("$PY" -c "from objguided_d2.comparison.presets import SAMPLING_ABLATION_CONFIGS as c; print(' '.join(c))")

# 1. Train every (family, config) once, JOBS at a time; one method per compare call so that the
#    calls can run in parallel (each call trains, evaluates and reports its one method).
jobs_list() {
  for fam in leaves128 neural256 nuclei192; do
    for c in $FOUR; do echo "$fam $c"; done
  done
  for c in $ABLATION; do echo "leaves128 $c"; done
  echo "leaves128 Ours-fast=configs/fast/objguided_R18_fast_cpu.yaml"
  echo "leaves128 Ours-SGD=configs/tiny/objguided_R18_tiny_sgd.yaml"
}
export -f compare spec budget
export OUT PY
jobs_list | sort -u | xargs -P "$JOBS" -L 1 bash -c 'log="$OUT/$0.$(basename "${1#*=}" .yaml).log"; compare "$0" "$1" > "$log" 2>&1 || echo "FAILED: $0 $1 (log $log)"'

# 2. The reports (every run is reused): one table per family (+ the mask quality given GT boxes
#    and the learning curves),
#    the ablation, the fast variant.
for fam in leaves128 neural256 nuclei192; do
  # shellcheck disable=SC2086
  compare "$fam" $FOUR
  mkdir -p "$OUT/report/$fam"
  cp "$OUT/$fam"/{table.md,table.csv,results.json,reproduce.md,ap_vs_iou.png,qualitative.png} "$OUT/report/$fam/"
  # The mask heads alone: every method segments each test object from its ground-truth box.
  "$PY" benchmarks/oracle_boxes.py "$OUT/$fam" --dataset "$(spec "$fam")" --threads 1 \
    --methods objguided_R18_tiny objguided_R18_tiny_norefine mask_rcnn_R18_tiny pointrend_R18_tiny \
    --output "$OUT/report/$fam/oracle_boxes.md"
  # Still improving when the budget ends? The paper metrics at the saved checkpoints.
  "$PY" benchmarks/learning_curve.py "$OUT/$fam" --dataset "$(spec "$fam")" --threads 1 \
    --methods objguided_R18_tiny objguided_R18_tiny_norefine mask_rcnn_R18_tiny pointrend_R18_tiny \
    --output "$OUT/report/$fam/learning_curve.md"
done
# shellcheck disable=SC2086
compare leaves128 $ABLATION
mkdir -p "$OUT/report/ablation_sampling_leaves128"
cp "$OUT/leaves128"/{table.md,table.csv,results.json,reproduce.md,ap_vs_iou.png} "$OUT/report/ablation_sampling_leaves128/"
compare leaves128 "$T/objguided_R18_tiny.yaml" Ours-fast=configs/fast/objguided_R18_fast_cpu.yaml
mkdir -p "$OUT/report/fast_leaves128"
cp "$OUT/leaves128"/{table.md,table.csv,results.json,reproduce.md} "$OUT/report/fast_leaves128/"
# Optimizer fairness: ours with the baselines' SGD solver.
compare leaves128 "$T/objguided_R18_tiny.yaml" Ours-SGD=configs/tiny/objguided_R18_tiny_sgd.yaml \
  "$T/mask_rcnn_R18_tiny.yaml" "$T/pointrend_R18_tiny.yaml"
mkdir -p "$OUT/report/optimizer_leaves128"
cp "$OUT/leaves128"/{table.md,table.csv,results.json,reproduce.md} "$OUT/report/optimizer_leaves128/"
"$PY" benchmarks/learning_curve.py "$OUT/leaves128" --dataset "$(spec leaves128)" --threads 1 \
  --methods Ours-SGD --output "$OUT/report/optimizer_leaves128/learning_curve.md"
echo "Reports in $OUT/report/"
