#!/usr/bin/env bash
# The Rust crate as another crate uses it: libcommvq installed to a scratch
# prefix, and a crate outside the source tree (tests/install/rust_consumer)
# that depends on bindings/rust by path (no registry is reachable here),
# built offline and run with no COMMVQ_LIBRARY or LD_LIBRARY_PATH. Its
# build.rs records the installed library's directory (from commvq.pc) as
# the program's run path.
#
# Usage: check_rust_crate.sh BUILD_DIR SOURCE_DIR CARGO TARGET_DIR CODEBOOK WORK
set -euo pipefail
build_dir=$1 source_dir=$(cd "$2" && pwd) cargo=$3 target_dir=$(realpath -m "$4") codebook=$(realpath "$5") work=$(realpath -m "$6")
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
libdir="$(ls -d "$work"/prefix/lib*/pkgconfig | head -n1)"; libdir="${libdir%/pkgconfig}"

crate=$(mktemp -d "${TMPDIR:-/tmp}/commvq-rust-consumer.XXXXXX")
trap 'rm -rf "$crate"' EXIT
cp -r "$source_dir/tests/install/rust_consumer/src" "$source_dir/tests/install/rust_consumer/build.rs" "$crate/"
cat > "$crate/Cargo.toml" <<TOML
[package]
name = "commvq-consumer"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
commvq = { path = "$source_dir/bindings/rust" }
TOML
cd "$crate"
export CARGO_TARGET_DIR="$target_dir" CARGO_HOME="$work/cargo-home" CARGO_BUILD_JOBS=2 CARGO_TERM_COLOR=never \
  PKG_CONFIG_PATH="$libdir/pkgconfig"
"$cargo" build --offline --quiet
env -u LD_LIBRARY_PATH -u COMMVQ_LIBRARY "$target_dir/debug/commvq-consumer" "$codebook"
