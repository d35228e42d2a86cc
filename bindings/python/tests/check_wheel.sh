#!/usr/bin/env bash
# The wheel as a user gets it: built from bindings/python by pip, installed
# into a scratch directory, and used by a program that runs outside the
# source tree with no COMMVQ_LIBRARY or LD_LIBRARY_PATH, so only the bundled
# libcommvq.so can be found.
#
# Usage: check_wheel.sh PYTHON LIBCOMMVQ CODEBOOK
#   PYTHON: an interpreter with pip and NumPy (Debian: /usr/bin/python3)
set -euo pipefail
python=$1 library=$2 codebook=$3
package_dir=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/commvq-wheel-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# Built twice, from the library CMake built: the same bytes both times.
for dist in dist1 dist2; do
  COMMVQ_WHEEL_LIBRARY=$library "$python" -m pip wheel --quiet --no-index --no-deps --no-build-isolation \
    --wheel-dir "$scratch/$dist" "$package_dir"
done
wheel=$(ls "$scratch"/dist1/commvq-*.whl)
cmp "$wheel" "$scratch/dist2/$(basename "$wheel")"
echo "built $(basename "$wheel") (reproducible)"

"$python" -m pip install --quiet --no-index --no-deps --target "$scratch/site" "$wheel"

mkdir "$scratch/run"
cat > "$scratch/run/program.py" <<'EOF'
import importlib.metadata
import os
import sys

import numpy as np

import commvq

site = os.path.realpath(sys.argv[1])
assert os.path.realpath(commvq.__file__).startswith(site + os.sep), commvq.__file__
assert os.path.realpath(commvq.library_path()) == os.path.join(site, "commvq", "libcommvq.so"), \
    commvq.library_path()
assert os.path.exists(os.path.join(site, "commvq", "py.typed"))
assert importlib.metadata.version("commvq") == commvq.version(), (importlib.metadata.version("commvq"),
                                                                   commvq.version())

rng = np.random.default_rng(0)
with commvq.Codebook.load(sys.argv[2]) as cb, commvq.Cache(cb, window=4, max_tokens=256) as cache:
    info = cb.info
    k = rng.standard_normal((16, info["n_kv_heads"], info["head_dim"]), dtype=np.float32)
    v = rng.standard_normal((16, info["n_kv_heads"], info["head_dim"]), dtype=np.float32)
    cache.append(0, 0, k, v)
    q = rng.standard_normal((1, info["n_q_heads"], info["head_dim"]), dtype=np.float32)
    out, lse = cache.attend(0, 0, q)
    assert out.shape == (1, info["n_q_heads"], info["head_dim"]) and np.isfinite(out).all()
    assert cache.seq_length(0) == 16
    try:
        cache.append(2**33 + 1, 0, k, v)
    except ValueError as e:
        assert "layer" in str(e), e
    else:
        raise AssertionError("layer 2**33+1 was accepted")
print(f"commvq {commvq.version()} from {commvq.library_path()}: attention of {cache.n_q_heads} heads ok")
EOF
cd "$scratch/run"
env -u COMMVQ_LIBRARY -u LD_LIBRARY_PATH PYTHONPATH="$scratch/site" "$python" program.py "$scratch/site" "$codebook"
