#!/usr/bin/env bash
# What runs on the GPU machine (docs/PERF.md, docs/GPU.md): build for sm_90,
# the gpu-labelled tests, optionally compute-sanitizer, then the benchmark.
#   [BENCH_ARGS="decode full prefill encode prompt"] [TEST_CASES="gpu: *"] bash bench/run_gpu.sh [tests] [bench] [sanitize] [train] [ncu] [ncu_pipes] [ncu_kernels] [ncu_source] [baseline] [variant] [sass]
# baseline: the decode benchmark (BENCH_CASES) of an earlier version's kernels/, saved in
# .deps/baseline/kernels by `git archive REF kernels | tar -x -C .deps/baseline` and carried,
# built beside this one, so both are timed on the same card in one call.
# (BUILD_TARGETS narrows the build to what the steps need; TEST_TIMEOUT, BENCH_TIMEOUT, SANITIZE_TIMEOUT, NCU_TIMEOUT and SANITIZE_TOOLS bound each step;
# ncu reads the attention kernel's counters at 1 bit, B=1, 128K.)
# Logs go to $OUT when set, else build-gpu/logs; the build logs end up in build_logs.tgz there
# (the device tool returns at most 8 files).
set -uo pipefail
OUTDIR=${OUT:-build-gpu/logs}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUTDIR/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCOMMVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCOMMVQ_BUILD_BINDINGS=OFF \
  -DCOMMVQ_BUILD_EXAMPLES=OFF > "$OUTDIR/configure.log" 2>&1 || { tail -30 "$OUTDIR/configure.log"; exit 1; }
if [[ " $* " == *" baseline "* && ! -f /tmp/baseline/build/bench/libcommvq_bench.so ]]; then
  # The earlier version's tree: this one with its kernels/ swapped in, built in parallel.
  rm -rf /tmp/baseline && mkdir -p /tmp/baseline && tar --exclude=./build-gpu --exclude=./.deps -cf - . | tar -xf - -C /tmp/baseline
  rm -rf /tmp/baseline/kernels && cp -r .deps/baseline/kernels /tmp/baseline/kernels && mkdir -p /tmp/baseline/.deps && cp -r .deps/include /tmp/baseline/.deps/
  (cmake -S /tmp/baseline -B /tmp/baseline/build -G Ninja -DCOMMVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCOMMVQ_BUILD_BINDINGS=OFF \
     -DCOMMVQ_BUILD_EXAMPLES=OFF -DCOMMVQ_BUILD_TESTS=OFF > "$OUTDIR/baseline_build.log" 2>&1 \
   && cmake --build /tmp/baseline/build -j8 --target commvq_bench >> "$OUTDIR/baseline_build.log" 2>&1; echo "baseline build: exit $?") &
fi
cmake --build build-gpu -j16 --target ${BUILD_TARGETS:-commvq_gpu_tests commvq_bench train_speed} > "$OUTDIR/build.log" 2>&1 \
  || { grep -E "error|FAILED" -A5 "$OUTDIR/build.log" | head -60; exit 1; }
wait
for step in "$@"; do
  case "$step" in
  tests)
    (cd build-gpu/tests && timeout ${TEST_TIMEOUT:-150} ./commvq_gpu_tests -s -d -tc="${TEST_CASES:-*}") > "$OUTDIR/gpu_tests.log" 2>&1
    echo "gpu tests: exit $?"; grep -E "MESSAGE| s: gpu" "$OUTDIR/gpu_tests.log" | head -60
    # Errors and the totals apart, so that no number of messages hides them.
    grep -E "ERROR|FAILED|CRASH|SIGSEGV|test cases|assertions" "$OUTDIR/gpu_tests.log" | head -40
    gzip -f "$OUTDIR/gpu_tests.log" ;;  # whole, it is too large to come back from the device
  sanitize)
    # racecheck instruments every shared-memory access: the short cases only.
    for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
      cases=${SANITIZE_CASES:-"*random data*,*batched*,*fork*,*graph*,*capacity*"}
      [ $tool = racecheck ] && cases=${RACECHECK_CASES:-"*fork*,*graph*"}
      (cd build-gpu/tests && timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool $tool --error-exitcode 9 ./commvq_gpu_tests \
        -tc="$cases") > "$OUTDIR/sanitizer_$tool.log" 2>&1
      echo "compute-sanitizer $tool: exit $?"; tail -4 "$OUTDIR/sanitizer_$tool.log"
    done ;;
  train)
    # Training speed, CPU (all cores) against CUDA: docs/TRAINING.md.
    timeout ${TRAIN_TIMEOUT:-240} build-gpu/bench/train_speed ${TRAIN_ARGS:-65536 0 10 100} 2>&1 | tee "$OUTDIR/train_speed.md" ;;
  ncu)
    # Counters of the attention kernel at 1 bit, B=1, 128K tokens (one launch).
    BENCH_CASES=1:1:131072 timeout ${NCU_TIMEOUT:-240} ncu --clock-control none -k regex:attend_kernel -s 2 -c 1 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section InstructionStats \
      --section LaunchStats --section MemoryWorkloadAnalysis \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,sass__inst_executed_per_opcode" \
      --print-metric-instances values \
      python3 bench/bench.py build-gpu/bench/libcommvq_bench.so decode > "$OUTDIR/ncu.txt" 2>&1
    echo "ncu: exit $?"; grep -E "Duration|Achieved Occupancy|Executed Instructions |stalled|per_opcode" "$OUTDIR/ncu.txt" | head -40 ;;
  ncu_pipes)
    # Which pipe and memory path the attention kernel keeps busy (same case
    # as ncu): pipe utilization per unit, shared-memory wavefronts and bank
    # conflicts, stall reasons, instruction mix.
    BENCH_CASES=${NCU_CASES:-1:1:131072} timeout ${NCU_TIMEOUT:-240} ncu --clock-control none -k regex:attend_kernel -s 2 -c 1 \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats \
      --section InstructionStats --section Occupancy --print-details all \
      python3 bench/bench.py build-gpu/bench/libcommvq_bench.so decode > "$OUTDIR/ncu_pipes.txt" 2>&1
    echo "ncu pipes: exit $?"; grep -iE "Duration|pipe|Shared|Bank|Issue Slots|Executed Ipc" "$OUTDIR/ncu_pipes.txt" | head -40 ;;
  ncu_kernels)
    # Duration of each kernel of one decode step (attention and the two
    # merge kernels) for each case in NCU_CASES.
    for case in ${NCU_CASES:-1:1:1024 1:1:131072}; do
      BENCH_CASES=$case timeout ${NCU_TIMEOUT:-240} ncu --clock-control none -k regex:"attend_kernel|apply_codebook|finish_kernel" \
        -s 6 -c 3 --section SpeedOfLight python3 bench/bench.py build-gpu/bench/libcommvq_bench.so decode \
        > "$OUTDIR/ncu_kernels_${case//:/_}.txt" 2>&1
      echo "ncu kernels $case: exit $?"
      grep -E "^  [a-z_]+.*\(|Duration" "$OUTDIR/ncu_kernels_${case//:/_}.txt" | sed -E 's/\(commvq::cuda::AttendParams\)//' | head -12
    done ;;
  ncu_source)
    # Stall samples per SASS instruction of the attention kernel (same case
    # as ncu): the report, and its source page as CSV for reading elsewhere.
    BENCH_CASES=${NCU_CASES:-1:1:131072} timeout ${NCU_TIMEOUT:-240} ncu --clock-control none -k regex:attend_kernel -s 2 -c 1 \
      --section SourceCounters --section WarpStateStats -f -o "$OUTDIR/attend_source" \
      python3 bench/bench.py build-gpu/bench/libcommvq_bench.so decode > "$OUTDIR/ncu_source.log" 2>&1
    echo "ncu source: exit $?"
    ncu --import "$OUTDIR/attend_source.ncu-rep" --page source --csv --print-source sass > "$OUTDIR/attend_sass.csv" 2>&1
    echo "source page: exit $? ($(wc -l < "$OUTDIR/attend_sass.csv") lines)"; gzip -f "$OUTDIR/attend_sass.csv" ;;
  baseline)
    # BASELINE_ENV (e.g. COMMVQ_CUDA_ATTEND_CHUNKS=256,128) applies to the baseline's run only.
    PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-300} env ${BASELINE_ENV:-} python3 bench/bench.py /tmp/baseline/build/bench/libcommvq_bench.so decode 2>&1 \
      | tee "$OUTDIR/bench_baseline.md" ;;
  sass)
    # Registers, spills and the SASS of the attention kernels, for reading elsewhere.
    obj=$(find build-gpu -name decode.cu.o | head -1)
    cuobjdump -res-usage "$obj" 2>&1 | grep -A1 attend_kernel | grep -oE "REG:[0-9]+|STACK:[0-9]+|SHARED:[0-9]+|LOCAL:[0-9]+" | sort | uniq -c | head
    cuobjdump -sass "$obj" > "$OUTDIR/decode.sass" 2>&1; gzip -f "$OUTDIR/decode.sass"; echo "sass: $(ls -la $OUTDIR/decode.sass.gz)" ;;
  variant)
    # The decode benchmark of this build again with VARIANT_ENV set (e.g.
    # COMMVQ_CUDA_ATTEND_NPW=4), so a run-time choice is timed in the same call.
    PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-300} env ${VARIANT_ENV:-} python3 bench/bench.py build-gpu/bench/libcommvq_bench.so decode 2>&1 \
      | tee "$OUTDIR/bench_variant.md" ;;
  bench)
    PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-300} python3 bench/bench.py build-gpu/bench/libcommvq_bench.so ${BENCH_ARGS:-} 2>&1 | tee "$OUTDIR/bench.md" ;;
  esac
done
(cd "$OUTDIR" && tar czf build_logs.tgz --remove-files gpu.txt configure.log build.log $(ls baseline_build.log 2>/dev/null) \
  && rm -f attend_source.ncu-rep)
