#!/usr/bin/env bash
# The four methods at the paper's size (ResNet-50, 512 px, batch 8) from scratch on one GPU, in one
# command of at most ~9 minutes on the lent device (no network there: no ImageNet weights, so every
# method starts from scratch alike; BatchNorm trained, nothing frozen). Evaluates all four the same
# way and prints the table (tools/compare.py: table.md, results.json, reproduce.md in OUT).
#
#   bash benchmarks/gpu_paper_size.sh prepare     # HERE (with network): wheels of the packages the
#                                                 # device lacks, into .whl/ (git-ignored)
#   bash benchmarks/gpu_paper_size.sh run [OUT]   # THERE: installs .whl/ to /tmp/site, runs, prints
#
# Settings (environment): ITERS (default 500 per method), JOBS (methods at once on the GPU, default
# 4), FAMILY (neural | leaves | nuclei, default neural: synth_<FAMILY>_paperscale resized to 512 px
# by the paper's crop-and-resize), DEVICE (default cuda; cpu for a dry run), DATASET_SPEC (another
# NAME=FORMAT:PATH to use instead, e.g. a tiny synthetic set for the dry run), THREADS (torch threads
# per job, default 4), SPEED_IMAGES (default 10), BATCH (default 8, the paper's; a CPU dry run needs
# less memory: BATCH=2 JOBS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
PY=${PYTHON:-python3}

if [ "$MODE" = prepare ]; then
  # What the device's image lacks (its package list: the device tool's KINDS.md). detectron2 has no
  # PyPI release: the pure-Python snapshot inside sal-detectron2 (tools/install_detectron2.py checks
  # the same file's sha256), renamed to py3-none-any so pip installs it on Python 3.12.
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl \
    pycocotools==2.0.10
  "$PY" -m pip download -q --no-deps -d .whl fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.1.0 \
    omegaconf==2.3.0 hydra-core==1.3.2 antlr4-python3-runtime==4.9.3
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" sal-detectron2==0.7.2
  "$PY" - "$tmp" <<'PYEOF'
import os, shutil, sys
sys.path.insert(0, "tools")
from install_detectron2 import WHEEL_FILE, WHEEL_SHA256, sha256_of
src = os.path.join(sys.argv[1], WHEEL_FILE)
if sha256_of(src) != WHEEL_SHA256:
    sys.exit(f"REFUSED: {src} does not have the sha256 tools/install_detectron2.py checks")
shutil.move(src, os.path.join(".whl", WHEEL_FILE.replace("-cp310-none-any", "-py3-none-any")))
PYEOF
  rm -rf "$tmp"
  # fvcore, iopath, antlr4 come as sdists only: build wheels of them here (pure Python).
  for s in .whl/*.tar.gz; do [ -e "$s" ] && "$PY" -m pip wheel -q --no-deps -w .whl "$s" && rm "$s"; done
  ls -la .whl
  exit 0
fi

OUT=${2:-out/gpu_paper_size}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import detectron2" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
ITERS=${ITERS:-500}
JOBS=${JOBS:-4}
FAMILY=${FAMILY:-neural}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-4}
# All jobs on the one GPU (job i gets the i-th entry of CUDA_VISIBLE_DEVICES).
if [ "$DEVICE" = cuda ] && [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
  export CUDA_VISIBLE_DEVICES=$(printf '0%.0s,' $(seq "$JOBS") | sed 's/,$//')
fi
DATA=(--dataset-name "synth_${FAMILY}_paperscale")
[ -n "${DATASET_SPEC:-}" ] && DATA=(--dataset "$DATASET_SPEC")
STEP=$(( ITERS * 8 / 10 ))
t0=$(date +%s)
"$PY" tools/compare.py --configs configs/"$FAMILY"/objguided_R_50.yaml configs/"$FAMILY"/objguided_R_50_norefine.yaml \
    configs/"$FAMILY"/mask_rcnn_R_50_FPN.yaml configs/"$FAMILY"/pointrend_R_50_FPN.yaml \
  "${DATA[@]}" --iters "$ITERS" --batch "${BATCH:-8}" --input-size 512 --device "$DEVICE" --jobs "$JOBS" --threads "$THREADS" \
  --speed-images "${SPEED_IMAGES:-10}" --output "$OUT" \
  --opts MODEL.WEIGHTS "" MODEL.BACKBONE.FREEZE_AT 0 MODEL.RESNETS.NORM BN \
    MODEL.OBJGUIDED.SCORE_THRESH_TEST 0.05 SOLVER.STEPS "($STEP,)" SOLVER.CHECKPOINT_PERIOD "$ITERS" || true
echo "wall: $(( $(date +%s) - t0 )) s for $ITERS iterations (batch ${BATCH:-8}) x 4 methods ($JOBS at once) on $DEVICE"
cat "$OUT/table.md"
