#!/usr/bin/env bash
# Issue 10's calibration grid on the GPU machine, in one device call:
# builds commvq-train and libcommvq.so (CUDA, sm_90), collects calibration KV
# from calib-text + calib-code, trains candidate 1- and 2-bit codebooks side by
# side on the GPU, measures each with tools/quality.py on held-out essays and
# standard-library code, and leaves at most 8 files in OUTDIR (calibrate.log,
# summary.md, results.tgz, codebooks-N.tar). tools/calibrate_grid.py does the
# work and says how; docs/QUALITY.md, "Choosing the calibration", says why.
#
# Prepare once, on the development machine, from the repository root
# (.deps is ignored by git; about 31 MB):
#
#   mkdir -p .deps/include .deps/shared/models .deps/shared/data
#   cp -r /usr/include/doctest /usr/include/nlohmann .deps/include/
#   cp -r /work/shared/models/bytellama-13m .deps/shared/models/
#   cp -r /work/shared/data/README.md /work/shared/data/calib-text \
#         /work/shared/data/calib-code /work/shared/data/eval-dev .deps/shared/data/
#
# Carry: .deps   (one path: the headers, the model and the data)
# Device command (one call; 8 minutes by default, BUDGET=seconds to change):
#
#   bash tools/calibrate-gpu.sh $OUT
#
# Options (environment): PRESET=default|small|dry, BUDGET=480 (seconds until
# everything has stopped and is packed), TRAIN_END (default BUDGET-25),
# SHARDS, WINDOWS=128,0, EVAL_DEVICE=cpu|cuda, GRID_FILE=grid.json (a
# preset's keys replaced), FRESH=1 (ignore what an earlier call on a warm
# machine left in /tmp/commvq-calib; by default it is reused and the run goes
# on from there). Without a GPU, to check the script at toy size:
#
#   PRESET=dry CUDA=OFF DEVICE=-1 BUILD_DIR=build-calib-cpu bash tools/calibrate-gpu.sh out/dry
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-out/calibrate}}
if [ -z "${PYTHON:-}" ]; then
  for p in python3 /opt/torch/.venv/bin/python3 /usr/bin/python3; do
    if command -v "$p" > /dev/null && "$p" -c "import torch, numpy" 2> /dev/null; then PYTHON=$(command -v "$p"); break; fi
  done
fi
[ -n "${PYTHON:-}" ] || { echo "no python3 with torch and numpy found (set PYTHON)"; exit 10; }
export PYTHON
exec "$PYTHON" tools/calibrate_grid.py "$OUTDIR"
