#!/usr/bin/env bash
# The test suite as CI runs it: a normal build and a sanitized build
# (address + undefined), each running every test not labelled gpu.
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
