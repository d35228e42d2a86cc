#!/usr/bin/env bash
# The Go binding as another module uses it: libcommvq installed to a scratch
# prefix, and a module outside the source tree that requires
# commvq.org/libcommvq/bindings/go (replaced by this checkout: no module
# proxy is reachable here), built through the installed commvq.pc and run
# with no COMMVQ_LIBRARY or LD_LIBRARY_PATH. `-ldflags "-r LIBDIR"` records
# the library's directory in the program, as an rpath does for a C program,
# so Open("") finds it.
#
# Usage: check_go_module.sh BUILD_DIR SOURCE_DIR GO CC GOCACHE CODEBOOK WORK
set -euo pipefail
build_dir=$1 source_dir=$(cd "$2" && pwd) go=$3 cc=$4 gocache=$(realpath -m "$5") codebook=$(realpath "$6") work=$(realpath -m "$7")
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
libdir="$(ls -d "$work"/prefix/lib*/pkgconfig | head -n1)"; libdir="${libdir%/pkgconfig}"

module=$(mktemp -d "${TMPDIR:-/tmp}/commvq-go-consumer.XXXXXX")
trap 'rm -rf "$module"' EXIT
cp "$source_dir/tests/install/go_consumer/main.go" "$module/"
cat > "$module/go.mod" <<EOF
module example.com/commvq-consumer

go 1.19

require commvq.org/libcommvq/bindings/go v0.0.0

replace commvq.org/libcommvq/bindings/go => $source_dir/bindings/go
EOF
cd "$module"
export GOCACHE="$gocache" GOPATH="$work/go-path" GOENV=off GOFLAGS=-buildvcs=false GOPROXY=off GO111MODULE=on \
  CGO_ENABLED=1 CC="$cc" PKG_CONFIG_PATH="$libdir/pkgconfig"
"$go" build -ldflags "-r $libdir" -o "$work/consumer" .
if readelf -d "$work/consumer" | grep -q 'NEEDED.*libcommvq'; then
  echo "the program links libcommvq; the binding should open it at run time" >&2; exit 1
fi
env -u LD_LIBRARY_PATH -u COMMVQ_LIBRARY "$work/consumer" "$codebook"
