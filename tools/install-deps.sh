#!/usr/bin/env bash
# Installs what libcommvq needs to build, test and run its demo on a fresh
# Debian machine (as root). The CUDA toolkit is used when present, never
# installed here.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  doctest-dev nlohmann-json3-dev libopenblas-dev
  python3 python3-numpy python3-torch
  clang libclang-rt-14-dev
)
if [ -f "$(dirname "$0")/../.ci/bindings-packages.txt" ]; then
  while read -r p; do
    case "$p" in ''|\#*) ;; *) packages+=("$p") ;; esac
  done < "$(dirname "$0")/../.ci/bindings-packages.txt"
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
