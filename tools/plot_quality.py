#!/usr/bin/python3
"""Plots of tools/quality.py's results: bits/byte lost against stored bits per
element for every method, one panel per text domain; and per layer the key
and value error (MSE over the tensors' mean square) of every quantizer.

    /usr/bin/python3 tools/plot_quality.py            # docs/img/quality-*.png from the shipped results
    /usr/bin/python3 tools/plot_quality.py --results build/quality.json --out docs/img

Needs matplotlib (Debian: apt-get install python3-matplotlib). Reads results
files with text domains (tools/quality.py now) and the earlier format
(essays and repeat only, bench/results/2026-11-29/codebooks/quality-*.json).
"""

import argparse
import os
import sys

import json

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "..", "bench", "results", "2026-11-29", "codebooks", "quality-main.json")
DEFAULT_OUT = os.path.join(HERE, "..", "docs", "img")

# method -> (label, colour, marker); the order of the legends.
METHODS = {
    "commvq-1bit": ("CommVQ 1 bit", "#1f77b4", "o"),
    "commvq-2bit": ("CommVQ 2 bits", "#2ca02c", "o"),
    "kivi-1bit": ("KIVI 1 bit", "#d62728", "s"),
    "kivi-2bit": ("KIVI 2 bits", "#ff7f0e", "s"),
    "int4-token": ("per-token 4 bits", "#9467bd", "^"),
}
FLOOR = 1e-3  # bits/byte lost below this are drawn at it (log axis)


def domain_labels(texts):
    """[(label, scored bytes)], results with domains or the earlier essays + repeat."""
    if "domains" in texts:
        return [(l, d["scored_bytes"]) for l, d in texts["domains"].items()]
    return [("essays", texts["essay_bytes"]), ("repeat", texts["repeat_bytes"])]


def row_domain(row, label):
    return row["domains"].get(label) if "domains" in row else row.get(label)


def mse_sets(results):
    """[(domain, mse table)]: MSE per method per layer, with 'mean square'."""
    if "mse_domains" in results:
        return [(l, m["mse"]) for l, m in results["mse_domains"].items()]
    if "mse" in results:
        return [("essays", results["mse"])]
    return []


def split_name(name):
    """'commvq-1bit-w128' -> ('commvq-1bit', 128); 'exact' -> ('exact', None)."""
    method, sep, w = name.rpartition("-w")
    return (method, int(w)) if sep and w.isdigit() else (name, None)


def points(results, domain):
    """{method: [(window, bits per element, bpb lost)]} on a domain."""
    rows = results["settings"]
    exact = row_domain(rows["exact"], domain) if "exact" in rows else None
    out = {}
    if not exact:
        return out
    for name, row in rows.items():
        method, window = split_name(name)
        d = row_domain(row, domain)
        if method in METHODS and d:
            out.setdefault(method, []).append((window, row["bits_per_element"], d["bpb"] - exact["bpb"]))
    return out


def plot_bpb(results, path, plt):
    domains = domain_labels(results["texts"])
    exact = results["settings"].get("exact")
    fig, axes = plt.subplots(1, len(domains), figsize=(max(5.2 * len(domains), 8.5), 4.6), squeeze=False)
    for ax, (domain, nbytes) in zip(axes[0], domains):
        for method, pts in points(results, domain).items():
            label, colour, marker = METHODS[method]
            for window, bits, lost in sorted(pts, key=lambda p: -(p[0] or 0)):
                filled = window != 0
                ax.scatter([bits], [max(lost, FLOOR)], s=60, marker=marker, color=colour,
                           facecolors=colour if filled else "none", zorder=3,
                           label=f"{label}" if filled else None)
                if filled:
                    ax.annotate(f"{lost:+.3f}", (bits, max(lost, FLOOR)), textcoords="offset points",
                                xytext=(7, -3), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 2, 3, 4, 8, 16])
        ax.set_xticklabels(["1", "2", "3", "4", "8", "16"])
        ax.set_xlim(0.8, 6)
        ax.set_xlabel("stored bits per element (all overhead)")
        ax.set_ylabel("bits/byte lost against exact")
        base = row_domain(exact, domain)["bpb"] if exact and row_domain(exact, domain) else None
        ax.set_title(f"{domain}: {nbytes} bytes" + (f", exact {base:.3f} bpb" if base else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(base * 0.01 if base else FLOOR, color="grey", ls=":", lw=1)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    fig.suptitle("Model quality against cache size (bytellama-13m)\n"
                 "filled: window 128, hollow: window 0; dotted: 1% of exact", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(results, path, plt):
    sets = mse_sets(results)
    if not sets:
        return False
    fig, axes = plt.subplots(len(sets), 2, figsize=(11, 3.8 * len(sets)), squeeze=False)
    for (domain, mse), row in zip(sets, axes):
        ms = mse["mean square"]
        methods = [m for m in METHODS if m in mse]
        n_layers = len(ms["key"])
        width = 0.8 / len(methods)
        for ax, kind in zip(row, ("key", "value")):
            for i, m in enumerate(methods):
                label, colour, _ = METHODS[m]
                rel = [x / y for x, y in zip(mse[m][kind], ms[kind])]
                ax.bar([l - 0.4 + width * (i + 0.5) for l in range(n_layers)], [max(r, 1e-8) for r in rel],
                       width, color=colour, label=label)
            ax.set_yscale("log")
            ax.set_xticks(range(n_layers))
            ax.set_xticklabels([f"layer {l}" for l in range(n_layers)])
            ax.set_ylabel(f"{kind} MSE / mean square")
            ax.set_title(f"{domain}: {kind}s (every token quantized)", fontsize=10)
            ax.grid(True, axis="y", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle("Key and value error per layer (bytellama-13m)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=DEFAULT_RESULTS, help="a tools/quality.py results file")
    ap.add_argument("--out", default=DEFAULT_OUT, help="directory for the PNGs (default docs/img)")
    ap.add_argument("--prefix", default="quality", help="file names: PREFIX-bpb.png, PREFIX-error.png")
    args = ap.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_quality.py needs matplotlib: apt-get install python3-matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(args.results) as f:
        results = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    bpb = os.path.join(args.out, f"{args.prefix}-bpb.png")
    plot_bpb(results, bpb, plt)
    print(f"wrote {bpb}")
    err = os.path.join(args.out, f"{args.prefix}-error.png")
    if plot_errors(results, err, plt):
        print(f"wrote {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
