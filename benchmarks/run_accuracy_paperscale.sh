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
#   STEPS="ablation compare report archive"               which steps to run (default all)
#   ARCHIVE=DIR          where step "archive" copies the finished runs without checkpoints
#                        (default benchmarks/results/paperscale/study; see benchmarks/archive_study.py)
# A study longer than a session: run "report archive" before the session ends and commit the
# archive; in the next checkout `cp -r benchmarks/results/paperscale/study/. OUT/` and rerun.
# Cost measured on the shared 2-core machine: see RESULTS.md section 9 (seconds per iteration).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/paperscale}
JOBS=${2:-2}
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-ablation compare report archive}
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
  # Oracle boxes and learning curves read seed 0's checkpoints: run this step before archiving.
  ids=(objguided_R18_tiny objguided_R18_tiny_norefine mask_rcnn_R18_tiny pointrend_R18_tiny)
  [ -n "${OURS_PLUS:-}" ] && ids+=(Ours)  # run id of "Ours+" (runs/<name with "+" dropped>)
  for fam in leaves neural nuclei; do
    if [ -f "$OUT/${fam}_seed0/results.json" ] && [ -f "$OUT/${fam}_seed1/results.json" ]; then
      targets=margins; [ "$fam" = nuclei ] && targets=level  # the paper's targets per family
      "$PY" benchmarks/seed_table.py "$OUT/${fam}_seed0" "$OUT/${fam}_seed1" --targets "$targets" \
        --output "$OUT/${fam}_seeds.md" --overwrite
    fi
    have=()
    for id in "${ids[@]}"; do [ -f "$OUT/${fam}_seed0/runs/$id/model_0002499.pth" ] && have+=("$id"); done
    [ ${#have[@]} -gt 0 ] || continue
    "$PY" benchmarks/oracle_boxes.py "$OUT/${fam}_seed0" --dataset-name "synth_${fam}_paperscale" --threads 1 \
      --methods "${have[@]}" --output "$OUT/${fam}_seed0/oracle_boxes.md"
    "$PY" benchmarks/learning_curve.py "$OUT/${fam}_seed0" --dataset-name "synth_${fam}_paperscale" --threads 1 \
      --methods "${have[@]}" --iters 499 999 1499 1999 2499 2999 --output "$OUT/${fam}_seed0/learning_curve.md"
  done
esac

case " $STEPS " in *" archive "*)
  # Finished runs without checkpoints, to commit (a fresh checkout copies them back to continue).
  for d in "$OUT"/*_seed*/; do
    [ -d "$d/runs" ] && "$PY" benchmarks/archive_study.py "$d" "${ARCHIVE:-benchmarks/results/paperscale/study}/$(basename "$d")"
  done
  cp -f "$OUT"/*_seeds.md "${ARCHIVE:-benchmarks/results/paperscale/study}/" 2>/dev/null || true
esac

echo "Study folder: $OUT"
