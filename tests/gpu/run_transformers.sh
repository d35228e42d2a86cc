#!/usr/bin/env bash
# commvq.transformers on the GPU machine: the torch-tensor test on CUDA, the
# bytellama-13m checks (tests/gpu/check_transformers.py) and the decode
# benchmark (bench/hf_decode.py). Run from the repository root after
#   cmake -S . -B build-gpu -G Ninja -DCOMMVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCOMMVQ_BUILD_BINDINGS=OFF
#   cmake --build build-gpu --target commvq
# Needs python3 with torch, transformers 5.x and numpy. Logs go to $OUT (else build-gpu/logs).
#   [HF_BENCH_CONTEXTS=8192,32768,131072] [HF_BENCH_ARGS=...] [HF_CHECK_ARGS=...] bash tests/gpu/run_transformers.sh
# TENSORS_TIMEOUT, CHECK_TIMEOUT, TP_TIMEOUT and BENCH_TIMEOUT (seconds) bound each step;
# SKIP_STEPS="bench" (any of tensors check tp bench) leaves steps out.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${OUT:-build-gpu/logs}
LIB=${COMMVQ_LIBRARY:-build-gpu/libcommvq.so}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
if [ ! -e "$LIB" ]; then
  echo "FAIL: $LIB not found; build it first: cmake --build build-gpu --target commvq" >&2
  exit 2
fi
if ! "$PY" -c "import torch, transformers, numpy" 2> "$OUTDIR/imports.log"; then
  echo "FAIL: $PY lacks torch, transformers or numpy:" >&2; cat "$OUTDIR/imports.log" >&2
  exit 2
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'transformers', transformers.__version__)" \
  | tee "$OUTDIR/versions.txt"

status=0
step() {  # key name timeout log command...
  if [[ " ${SKIP_STEPS:-} " == *" $1 "* ]]; then echo "== $2: left out (SKIP_STEPS)"; return 0; fi
  local name=$2 limit=$3 log=$4; shift 4
  echo "== $name (at most ${limit}s): $*"
  PYTHONUNBUFFERED=1 timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$log" 2>&1
  local rc=$?
  case $rc in
    0) echo "$name: exit 0" ;;
    124|137) echo "$name: TIMED OUT after ${limit}s (log: $OUTDIR/$log)"; status=1 ;;
    *) echo "$name: exit $rc (log: $OUTDIR/$log)"; status=1 ;;
  esac
  grep -E "^(PASS|FAIL|SKIP|REPORT|RESULT)|Error|error:" "$OUTDIR/$log" | head -40
  [ $rc -ne 0 ] && tail -15 "$OUTDIR/$log"
  return 0
}

step tensors "torch tensors (CPU and CUDA)" "${TENSORS_TIMEOUT:-120}" tensors.log \
  env COMMVQ_LIBRARY="$LIB" "$PY" -B bindings/python/tests/test_tensors.py tests/data/golden/codebook.safetensors
step check "bytellama-13m checks" "${CHECK_TIMEOUT:-360}" check_transformers.log \
  "$PY" -B tests/gpu/check_transformers.py --library "$LIB" ${HF_CHECK_ARGS:-}
# Tensor parallelism (docs/PARALLEL.md): 2 ranks with tp_plan="auto"; on one GPU the gloo
# backend with the ranks on the CPU (NCCL refuses two ranks on one GPU), on two or more NCCL.
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  step tp "tensor parallel, 2 ranks, NCCL" "${TP_TIMEOUT:-360}" tensor_parallel.log \
    "$PY" -m torch.distributed.run --nproc-per-node 2 tests/gpu/check_tensor_parallel.py --library "$LIB" --device cuda
else
  step tp "tensor parallel, 2 ranks, gloo on the CPU" "${TP_TIMEOUT:-360}" tensor_parallel.log \
    env CUDA_VISIBLE_DEVICES= "$PY" -m torch.distributed.run --nproc-per-node 2 tests/gpu/check_tensor_parallel.py \
    --library "$LIB" --device cpu
fi
step bench "decode benchmark" "${BENCH_TIMEOUT:-480}" hf_decode.md \
  "$PY" -B bench/hf_decode.py --library "$LIB" --contexts "${HF_BENCH_CONTEXTS:-8192,32768,131072}" ${HF_BENCH_ARGS:-}
echo "== benchmark table ($OUTDIR/hf_decode.md)"
grep -E "^\||^[A-Z].*torch" "$OUTDIR/hf_decode.md"
echo "== summary: $([ $status -eq 0 ] && echo 'every step exited 0' || echo 'a step FAILED or timed out'); logs in $OUTDIR"
exit $status
