#!/usr/bin/python3
"""tools/plot_quality.py draws both figures from a results file with text
domains and from one of the earlier format (essays + repeat). Skipped (exit
77) where matplotlib is missing (Debian: python3-matplotlib).

Usage: test_plot_quality.py SCRATCH_DIR
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))


def main(scratch):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib missing: skipped")
        return 77
    import plot_quality
    os.makedirs(scratch, exist_ok=True)
    layers = [0.1, 0.2]

    def row(kind, bits, window, bpe, bpb):
        s = {"kind": kind, "window": window} if kind != "exact" else {"kind": "exact"}
        if bits:
            s["bits"] = bits
        return {"setting": s, "bits_per_element": bpe, "run": 1, "attention_rel_error": layers,
                "domains": {d: {"bpb": bpb + i, "bytes": 10, "attention_rel_error": layers}
                            for i, d in enumerate(("prose", "code"))}}

    mse = {m: {"key": [0.1, 0.2], "value": [0.3, 0.4]}
           for m in ("mean square", "commvq-1bit", "kivi-2bit", "int4-token")}
    results = {"texts": {"quick": False, "chunk": 2048, "domains": {
        d: {"kind": "chunks", "chunks_per_file": 0, "files": [], "chunks": 1, "scored_bytes": 10}
        for d in ("prose", "code")}},
        "runs": [], "settings": {"exact": row("exact", 0, None, 16.0, 1.8),
                                 "commvq-1bit-w128": row("commvq", 1, 128, 1.14, 1.85),
                                 "commvq-1bit-w0": row("commvq", 1, 0, 1.14, 1.86),
                                 "kivi-2bit-w128": row("kivi", 2, 128, 3.0, 1.95),
                                 "int4-token-w128": row("int4", 4, 128, 4.25, 1.8)},
        "mse_domains": {d: {"mse": mse, "run": 1, "tokens": 10} for d in ("prose", "code")}}
    path = os.path.join(scratch, "domains.json")
    with open(path, "w") as f:
        json.dump(results, f)
    pts = plot_quality.points(results, "code")
    assert sorted(pts) == ["commvq-1bit", "int4-token", "kivi-2bit"], pts
    assert any(w == 128 and b == 1.14 and abs(x - 0.05) < 1e-9 for w, b, x in pts["commvq-1bit"]), pts
    for results_file, prefix in ((path, "domains"), (plot_quality.DEFAULT_RESULTS, "old")):
        assert plot_quality.main(["--results", results_file, "--out", scratch, "--prefix", prefix]) == 0
        for kind in ("bpb", "error"):
            with open(os.path.join(scratch, f"{prefix}-{kind}.png"), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n", (prefix, kind)
    print("figures drawn from results with domains and from the earlier format")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
