#!/usr/bin/env bash
# Makes the shipped bytellama-13m codebooks (data/codebooks/README.md) on a
# CUDA device: builds commvq-train, collects 65536 calibration tokens per
# layer with tools/collect_kv.py, trains the 1-bit and 2-bit codebooks on
# 32768 of them and measures them on the held-out fixture.
#
#   [MODEL_DIR=...] [CALIB_DIR=...] [DEVICE=0] bash tools/train-codebooks-gpu.sh [OUTDIR]
#
# MODEL_DIR defaults to the shared bytellama-13m, CALIB_DIR to the shared
# calibration text (never eval-dev). Only six essays are read: with
# collect_kv's cap of 65536 tokens they are the ones the cap reaches.
# Writes OUTDIR (default $OUT, else out/) bytellama-13m-{1,2}bit.safetensors
# and the tool's output train-{1,2}bit.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-out}}
MODEL_DIR=${MODEL_DIR:-/work/shared/models/bytellama-13m}
CALIB_DIR=${CALIB_DIR:-/work/shared/data/calib-text}
DEVICE=${DEVICE:-0}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUTDIR"
cmake -S . -B build-gpu -G Ninja -DCOMMVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCOMMVQ_BUILD_BINDINGS=OFF \
  -DCOMMVQ_BUILD_EXAMPLES=OFF -DCOMMVQ_BUILD_TESTS=OFF > /dev/null 2>&1 || exit 11
cmake --build build-gpu -j"$(nproc)" --target commvq-train > "$OUTDIR/build.log" 2>&1 || { tail -20 "$OUTDIR/build.log"; exit 12; }
echo "built at $(date -u +%H:%M:%S)"
C=$CALIB_DIR
$PYTHON tools/collect_kv.py --model "$MODEL_DIR" --device cuda --max-tokens 65536 -o /tmp/calib_kv.safetensors \
  $C/apple.txt $C/vb.txt $C/web20.txt $C/aord.txt $C/mod.txt $C/philosophy.txt > "$OUTDIR/collect.log" 2>&1 \
  || { tail -20 "$OUTDIR/collect.log"; exit 13; }
echo "collected at $(date -u +%H:%M:%S)"; tail -1 "$OUTDIR/collect.log"
for b in 1 2; do
  t0=$(date +%s)
  # The time limits keep a run inside one device-tool call (10 minutes).
  timeout $([ $b = 1 ] && echo 170 || echo 260) build-gpu/tools/commvq-train -i /tmp/calib_kv.safetensors \
    -o "$OUTDIR/bytellama-13m-${b}bit.safetensors" --bits $b \
    --value-hidden 256 --value-steps 1000 --q-heads 4 --rope-theta 500000 --model-name bytellama-13m \
    --max-samples 32768 --device "$DEVICE" --storage f16 --eval tests/data/bytellama_kv.safetensors \
    > "$OUTDIR/train-${b}bit.log" 2> "$OUTDIR/train-${b}bit.err"
  echo "bits $b: exit $? in $(( $(date +%s) - t0 )) s"
done
