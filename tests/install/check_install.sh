#!/usr/bin/env bash
# Installs the built library into a scratch prefix, then builds a C99
# program against it four times: through pkg-config and find_package, with the
# shared library and with the static one; then imports the installed Python
# package from outside the source tree, with no library path set.
set -euo pipefail
build_dir="$1"; source_dir="$2"; work="$3"
rm -rf "$work" && mkdir -p "$work"
expect_static() {  # the program has libcommvq inside, and runs with no library path
  if readelf -d "$1" | grep -q 'NEEDED.*libcommvq'; then echo "$1 needs the shared libcommvq" >&2; exit 1; fi
  env -u LD_LIBRARY_PATH "$1"
}
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

# A C program linking commvq::commvq_static needs the C++ runtime from the
# target's link interface: it is linked by the C compiler.
cmake -S "$source_dir" -B "$work/consumer_static_build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCONSUMER_STATIC=ON \
  > "$work/configure_static.log"
cmake --build "$work/consumer_static_build" > "$work/build_static.log"
expect_static "$work/consumer_static_build/consumer"

# A prefix with only the static library, as a static-only install has, so
# -lcommvq cannot take the shared one: Libs.private must name all that
# libcommvq.a needs (the C++ runtime first of all), or the link fails.
static="$work/static_prefix"; static_libdir="$static/${libdir#"$work/prefix/"}"
mkdir -p "$static_libdir/pkgconfig"
cp -r "$work/prefix/include" "$static/"
cp "$libdir/libcommvq.a" "$static_libdir/"
cp "$libdir/pkgconfig/commvq.pc" "$static_libdir/pkgconfig/"
# shellcheck disable=SC2046
cc -std=c99 -pedantic -Wall -Wextra -Werror "$source_dir/consumer.c" -o "$work/consumer_static" \
  $(PKG_CONFIG_PATH="$static_libdir/pkgconfig" pkg-config --static --cflags --libs commvq)
expect_static "$work/consumer_static"

# The Python package of the prefix loads the prefix's library by itself.
(cd "$work" && env -u COMMVQ_LIBRARY -u LD_LIBRARY_PATH PYTHONPATH="$libdir/python3/site-packages" /usr/bin/python3 -B -c "
import os, sys, commvq
lib = os.path.realpath(commvq.library_path())
assert lib.startswith(os.path.realpath(sys.argv[1])), lib
assert os.path.realpath(commvq.__file__).startswith(os.path.realpath(sys.argv[1])), commvq.__file__
print('python package from the prefix:', commvq.version(), lib)
" "$work/prefix")
