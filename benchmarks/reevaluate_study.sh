#!/usr/bin/env bash
# Re-evaluate a tools/compare.py folder with this checkout's code, leaving that folder untouched:
# OUT gets a copy of its runs (checkpoints symlinked, not copied), and the same compare command
# with --output OUT reuses every finished training and evaluates, times and draws again (e.g. the
# figures of a study trained at an older commit). The run keys must match: same configs and data.
#
#   benchmarks/reevaluate_study.sh out/paperscale/leaves_seed0 out/leaves_seed0_now \
#       --preset paperscale-leaves --seed 0 --threads 1 --device cpu --configs ...
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 STUDY_DIR OUT_DIR [tools/compare.py arguments, without --output]" >&2; exit 2; }
src=$1 out=$2; shift 2
[ -d "$src/runs" ] || { echo "$0: $src is not a tools/compare.py folder (no runs/)" >&2; exit 2; }
[ ! -e "$out" ] || { echo "$0: $out exists; give a new folder" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)
cp -rs "$(cd "$src" && pwd)/runs" "$out/runs"
# Everything but the checkpoints becomes a real copy, so nothing written in OUT reaches STUDY_DIR.
find "$out/runs" -type l ! -name '*.pth' -exec sh -c 'cp --remove-destination "$(readlink "$1")" "$1"' _ {} \;
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" tools/compare.py "$@" --output "$out"
