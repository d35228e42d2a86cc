#!/usr/bin/env bash
# Builds the library and runs the demo: real keys, values and queries of
# bytellama-13m compressed at 1 and 2 bits, attention from the codes,
# compared with exact attention. Uses the GPU when one is there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/tools/install-deps.sh"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j "$(nproc)" --target commvq_demo
"$root/build/examples/commvq_demo" "$root/tests/data/bytellama_kv.safetensors" \
  "$root/data/codebooks/bytellama-13m-1bit.safetensors" \
  "$root/data/codebooks/bytellama-13m-2bit.safetensors"
