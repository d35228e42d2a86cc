#!/usr/bin/env bash
# Installs the built library into a scratch prefix, then builds a C99
# program against it twice: through pkg-config and through find_package.
set -euo pipefail
build_dir="$1"; source_dir="$2"; work="$3"
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
libdir="$(ls -d "$work"/prefix/lib*/pkgconfig | head -n1)"; libdir="${libdir%/pkgconfig}"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# shellcheck disable=SC2046
cc -std=c99 -pedantic -Wall -Wextra -Werror "$source_dir/consumer.c" -o "$work/consumer_pc" \
  $(pkg-config --cflags --libs commvq)
LD_LIBRARY_PATH="$libdir" "$work/consumer_pc"
cmake -S "$source_dir" -B "$work/consumer_build" -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log"
cmake --build "$work/consumer_build" > "$work/build.log"
LD_LIBRARY_PATH="$libdir" "$work/consumer_build/consumer"
