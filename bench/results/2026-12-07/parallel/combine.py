#!/usr/bin/python3
"""Adds up the shards of run_quality.sh: per design and domain, bits per byte
over the shards present (bits = bpb x bytes), and the loss against the exact
setting of the same shards. Writes summary.json and prints a markdown table.

    /usr/bin/python3 bench/results/2026-12-07/parallel/combine.py
"""

import glob
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DESIGNS = [(1, "full", "1 bit, shipped design: one codebook, both heads, token scales, I = 512"),
           (1, "perhead-i256", "1 bit, per-head codebooks, I = 256 per head"),
           (1, "perhead-i512", "1 bit, per-head codebooks, I = 512 per head"),
           (2, "full", "2 bits, shipped design: one codebook, both heads, token scales, I = 1024"),
           (2, "perhead-i512", "2 bits, per-head codebooks, I = 512 per head")]


def main():
    files = {}
    for path in glob.glob(os.path.join(HERE, "q*-s*-*.json")):
        m = re.match(r"q(2?)-s(\d+)-(.+)\.json$", os.path.basename(path))
        files.setdefault(int(m.group(2)), {})[(int(m.group(1) or 1), m.group(3))] = json.load(open(path))
    out = {"designs": {}}
    lines = []
    for bits in (1, 2):
        designs = [(n, d) for b, n, d in DESIGNS if b == bits]
        setting = f"commvq-{bits}bit-w128"
        # Only shards every design of this width finished, and the exact setting of that shard.
        shards = sorted(s for s, d in files.items()
                        if (1, "full") in d and "exact" in d[(1, "full")]["settings"]
                        and all((bits, n) in d and setting in d[(bits, n)]["settings"] for n, _ in designs))
        if not shards:
            continue
        sums = {}
        for s in shards:
            for name, _ in [("exact", "")] + designs:
                res = files[s][(1, "full")] if name == "exact" else files[s][(bits, name)]
                row = res["settings"]["exact" if name == "exact" else setting]
                for label, d in row["domains"].items():
                    acc = sums.setdefault(name, {}).setdefault(label, [0.0, 0])
                    acc[0] += d["bpb"] * d["bytes"]
                    acc[1] += d["bytes"]
                sums[name].setdefault("_seconds", [0.0, 0])[0] += row["seconds"]
                if name != "exact":
                    out["designs"].setdefault(f"{bits}bit-{name}", {"codebook": row["codebook"],
                                                                    "bits_per_element": row["bits_per_element"]})
        exact = sums["exact"]
        labels = [l for l in exact if l != "_seconds"]
        ex = {l: {"bpb": exact[l][0] / exact[l][1], "bytes": exact[l][1]} for l in labels}
        out[f"exact_{bits}bit_shards"] = {"shards": [f"{s}/4" for s in shards], "domains": ex,
                                          "seconds": exact["_seconds"][0]}
        lines += [f"{bits} bit{'s' if bits > 1 else ''}: shards {', '.join(f'{s}/4' for s in shards)} of the "
                  "standard domains, window 128 (Δ: against the exact setting on the same chunks):", "",
                  "| design | " + " | ".join(f"{l} bpb | Δ vs exact" for l in labels) + " | bits/elem | seconds |",
                  "|---|" + "---|---|" * len(labels) + "---|---|",
                  "| exact | " + " | ".join(f"{ex[l]['bpb']:.4f} | " for l in labels) +
                  f" | 16.00 | {exact['_seconds'][0]:.0f} |"]
        for name, desc in designs:
            d = out["designs"][f"{bits}bit-{name}"]
            d["description"], d["shards"] = desc, [f"{s}/4" for s in shards]
            d["domains"] = {l: {"bpb": sums[name][l][0] / sums[name][l][1], "bytes": sums[name][l][1],
                                "delta": sums[name][l][0] / sums[name][l][1] - ex[l]["bpb"]} for l in labels}
            d["seconds"] = sums[name]["_seconds"][0]
            lines.append(f"| {desc} | " + " | ".join(f"{d['domains'][l]['bpb']:.4f} | "
                                                     f"{d['domains'][l]['delta']:+.4f}" for l in labels) +
                         f" | {d['bits_per_element']:.2f} | {d['seconds']:.0f} |")
        lines += ["", "Bytes scored: " + ", ".join(f"{l} {ex[l]['bytes']}" for l in labels), "",
                  "Per shard, Δ vs exact (" + ", ".join(labels) + "):", ""]
        for s in shards:
            ref = files[s][(1, "full")]["settings"]["exact"]["domains"]
            cells = []
            for name, _ in designs:
                dom = files[s][(bits, name)]["settings"][setting]["domains"]
                cells.append(f"{name} " + " ".join(f"{dom[l]['bpb'] - ref[l]['bpb']:+.4f}" for l in labels))
            lines.append(f"- shard {s}/4: " + "; ".join(cells))
        lines.append("")
    with open(os.path.join(HERE, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(HERE, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
