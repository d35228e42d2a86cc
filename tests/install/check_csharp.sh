#!/usr/bin/env bash
# The C# binding as a C# user has it: libcommvq installed to a scratch
# prefix (PREFIX/lib/cli/commvq/Commvq.dll beside PREFIX/lib/libcommvq.so.0),
# and a program outside the source tree compiled against the installed
# assembly and run with no COMMVQ_LIBRARY or LD_LIBRARY_PATH: the assembly
# finds the library from its own location. MONO_PATH is how Mono finds an
# assembly outside the GAC and the program's directory.
#
# Usage: check_csharp.sh BUILD_DIR SOURCE_DIR MCS MONO CODEBOOK WORK
set -euo pipefail
build_dir=$1 source_dir=$(cd "$2" && pwd) mcs=$3 mono=$4 codebook=$(realpath "$5") work=$(realpath -m "$6")
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
assembly=$(ls "$work"/prefix/lib*/cli/commvq/Commvq.dll)

program=$(mktemp -d "${TMPDIR:-/tmp}/commvq-csharp-consumer.XXXXXX")
trap 'rm -rf "$program"' EXIT
cp "$source_dir/tests/install/csharp_consumer/Consumer.cs" "$program/"
cd "$program"
"$mcs" -nologo -warnaserror -r:"$assembly" -out:Consumer.exe Consumer.cs
env -u LD_LIBRARY_PATH -u COMMVQ_LIBRARY MONO_PATH="$(dirname "$assembly")" "$mono" Consumer.exe "$codebook"
