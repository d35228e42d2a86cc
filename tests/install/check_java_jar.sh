#!/usr/bin/env bash
# The Java binding as a Java user has it: libcommvq installed to a scratch
# prefix, and a program outside the source tree compiled and run with only
# the installed jar on its class path (PREFIX/share/java/commvq-VERSION.jar):
# no -Djava.library.path, no org.commvq.jni, no LD_LIBRARY_PATH. The jar
# carries the JNI wrapper and libcommvq.so and loads them from itself.
#
# Usage: check_java_jar.sh BUILD_DIR SOURCE_DIR JAVAC JAVA CODEBOOK WORK
set -euo pipefail
build_dir=$1 source_dir=$(cd "$2" && pwd) javac=$3 java=$4 codebook=$(realpath "$5") work=$(realpath -m "$6")
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
jar=$(ls "$work"/prefix/share/java/commvq-*.jar)
pom=${jar%.jar}.pom
test -f "$pom" || { echo "no POM beside $jar" >&2; exit 1; }
grep -q '<groupId>org.commvq</groupId>' "$pom"

program=$(mktemp -d "${TMPDIR:-/tmp}/commvq-java-consumer.XXXXXX")
trap 'rm -rf "$program"' EXIT
cp "$source_dir/tests/install/java_consumer/Consumer.java" "$program/"
cd "$program"
"$javac" -encoding UTF-8 -Xlint:all -Werror --release 11 -cp "$jar" -d classes Consumer.java
env -u LD_LIBRARY_PATH -u COMMVQ_JNI_LIBRARY -u COMMVQ_LIBRARY \
  "$java" -Xshare:auto -XX:TieredStopAtLevel=1 -cp "$jar:classes" Consumer "$codebook"
