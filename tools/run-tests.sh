#!/usr/bin/env bash
# The test suite as CI runs it: a normal build and a sanitized build
# (address + undefined), each running every test not labelled gpu; then the
# tests that run threads under ThreadSanitizer, and each libFuzzer target for
# 60 s from the committed corpus (docs/RELIABILITY.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/tools/install-deps.sh"
jobs="$(nproc)"

cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j "$jobs"
(cd "$root/build" && ctest -LE gpu --output-on-failure -j "$jobs" --timeout 600)

# The sanitized build leaves out CUDA (never run here) and the bindings (their
# runtimes would need the sanitizer preloaded).
cmake -S "$root" -B "$root/build-sanitize" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCOMMVQ_SANITIZE=ON -DCOMMVQ_CUDA=OFF -DCOMMVQ_BUILD_BINDINGS=OFF
cmake --build "$root/build-sanitize" -j "$jobs"
(cd "$root/build-sanitize" && ctest -LE gpu --output-on-failure -j "$jobs" --timeout 1200)

# ThreadSanitizer: only the test executable, only the cases that run threads.
cmake -S "$root" -B "$root/build-tsan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMMVQ_SANITIZE=thread \
  -DCOMMVQ_CUDA=OFF -DCOMMVQ_BUILD_BINDINGS=OFF -DCOMMVQ_BUILD_EXAMPLES=OFF
cmake --build "$root/build-tsan" -j "$jobs" --target commvq_tests
"$root/build-tsan/tests/commvq_tests" -tc="concurrency*,thread count*,file inputs: two threads*" |
  tee "$root/build-tsan/tsan.log"
sed -n 's/^\[doctest\] test cases: *[0-9]* | *\([0-9]*\) passed | *\([0-9]*\) failed.*/tsan: \1 passed, \2 failed/p' \
  "$root/build-tsan/tsan.log"

# libFuzzer (clang): each target 60 s, its corpus grown in the build tree only.
cmake -S "$root" -B "$root/build-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMMVQ_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCOMMVQ_CUDA=OFF -DCOMMVQ_BUILD_BINDINGS=OFF \
  -DCOMMVQ_BUILD_EXAMPLES=OFF
cmake --build "$root/build-fuzz" -j "$jobs" --target commvq_fuzz_codebook commvq_fuzz_sequence commvq_fuzz_api
fuzzed=0
for target in codebook sequence api; do
  mkdir -p "$root/build-fuzz/corpus-$target"
  "$root/build-fuzz/tests/fuzz/commvq_fuzz_$target" -max_total_time=60 -print_final_stats=1 \
    "$root/build-fuzz/corpus-$target" "$root/tests/fuzz/corpus/$target"
  fuzzed=$((fuzzed + 1))
done
echo "fuzz: $fuzzed passed, 0 failed"
