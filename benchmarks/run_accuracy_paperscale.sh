#!/usr/bin/env bash
# The paper-scale CPU accuracy study of benchmarks/RESULTS.md (sections 9-11), end to end:
#   1. the detector ablation (options beyond the paper, one row each) on paper-scale leaves:
#      `tools/compare.py --preset ablation-detector`;
#   2. per family (leaves 384 px, neural cells 256 px, nuclei 512 px; synth_<family>_paperscale) and
#      seed (0, 1): ours, ours w/o refine, Mask R-CNN, PointRend (+ Ours+ when OURS_PLUS names its
#      config), 3000 iterations, batch 2, 192-px native-scale crops, whole-image tests
#      (`--preset paperscale-<family>`); then the seed table, the mask quality given GT boxes and
#      the learning curves of each family.
# Every run trains from scratch with one torch thread, JOBS at a time. Finished runs are reused and
# killed ones resume, so the same command continues a study that a session ended.
#
# Usage: benchmarks/run_accuracy_paperscale.sh [OUT_DIR] [JOBS]      (default out/paperscale 2)
#   OURS_PLUS=configs/tiny/objguided_R18_tiny_plus.yaml   add the Ours+ row (after step 1)
#   STEPS="ablation compare report"                       which steps to run (default all)
# Cost measured on the shared 2-core machine: see RESULTS.md section 9 (seconds per iteration).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/paperscale}
JOBS=${2:-2}
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-ablation compare report}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
PLUS=()
[ -n "${OURS_PLUS:-}" ] && PLUS=("Ours+=$OURS_PLUS")
FOUR=(configs/tiny/objguided_R18_tiny.yaml configs/tiny/objguided_R18_tiny_norefine.yaml
      configs/tiny/mask_rcnn_R18_tiny.yaml configs/tiny/pointrend_R18_tiny.yaml)

case " $STEPS " in *" ablation "*)
  "$PY" tools/compare.py --preset ablation-detector --jobs "$JOBS" --threads 1 --device cpu \
    --output "$OUT/ablation_detector" || echo "ablation: some method FAILED (see $OUT/ablation_detector/table.md)"
esac

case " $STEPS " in *" compare "*)
  for fam in leaves neural nuclei; do
    for seed in 0 1; do
      "$PY" tools/compare.py --preset "paperscale-$fam" --seed "$seed" --jobs "$JOBS" --threads 1 --device cpu \
        --configs "${FOUR[@]}" "${PLUS[@]}" --output "$OUT/${fam}_seed$seed" \
        || echo "$fam seed $seed: some method FAILED (see $OUT/${fam}_seed$seed/table.md)"
    done
  done
esac

case " $STEPS " in *" report "*)
  for fam in leaves neural nuclei; do
    [ -f "$OUT/${fam}_seed0/results.json" ] && [ -f "$OUT/${fam}_seed1/results.json" ] || continue
    "$PY" benchmarks/seed_table.py "$OUT/${fam}_seed0" "$OUT/${fam}_seed1" --output "$OUT/${fam}_seeds.md" --overwrite
    ids=(objguided_R18_tiny objguided_R18_tiny_norefine mask_rcnn_R18_tiny pointrend_R18_tiny)
    [ -n "${OURS_PLUS:-}" ] && ids+=(Ours_)
    "$PY" benchmarks/oracle_boxes.py "$OUT/${fam}_seed0" --dataset-name "synth_${fam}_paperscale" --threads 1 \
      --methods "${ids[@]}" --output "$OUT/${fam}_seed0/oracle_boxes.md"
    "$PY" benchmarks/learning_curve.py "$OUT/${fam}_seed0" --dataset-name "synth_${fam}_paperscale" --threads 1 \
      --methods "${ids[@]}" --output "$OUT/${fam}_seed0/learning_curve.md"
  done
esac
echo "Study folder: $OUT"
