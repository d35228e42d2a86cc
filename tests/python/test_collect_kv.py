#!/usr/bin/python3
"""tools/collect_kv.py's plans without a model run: --take budgets spread
evenly over their files (the calibration mix of tools/train-codebooks-gpu.sh)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import collect_kv  # noqa: E402


def main():
    files = [b"a" * 5000, b"b" * 100, b"c" * 9000, b"d" * 4096]  # chunks of 2048: 3 + 1 + 5 + 2
    every = collect_kv.plan_chunks(files, 0, 2048, None)
    assert len(every) == 11 and sum(n for _, _, n in every) == 18196
    # No cap, or a cap above the total: every chunk.
    assert collect_kv.plan_spread(files, 0, 2048, None) == every
    assert collect_kv.plan_spread(files, 0, 2048, 10 ** 6) == every
    # A cap: evenly spaced chunks from every part of the text, exactly the cap.
    for cap in (1, 2048, 5000, 8192, 12000, 18195):
        plan = collect_kv.plan_spread(files, 0, 2048, cap)
        assert sum(n for _, _, n in plan) == cap, (cap, plan)
        assert plan == sorted(plan) and len(set(plan)) == len(plan)
        assert all(p[:2] in [e[:2] for e in every] for p in plan)
    plan = collect_kv.plan_spread(files, 0, 2048, 8192)
    assert {fi for fi, _, _ in plan} == {0, 2, 3}, plan  # not the first file alone
    assert collect_kv.plan_chunks(files, 0, 2048, 8192)[-1][0] == 2  # the old cap stops in file 2
    # Groups: each budget over its own files, file indices counted across groups.
    plan = collect_kv.plan_groups([(3000, files[:2]), (4096, files[2:])], 0, 2048)
    assert sum(n for fi, _, n in plan if fi < 2) == 3000 and sum(n for fi, _, n in plan if fi >= 2) == 4096
    assert {fi for fi, _, _ in plan} >= {2, 3} and all(fi < 4 for fi, _, _ in plan), plan
    # Held-out text is refused whatever the option (checked in main before any model load).
    assert collect_kv.held_out_reason("/x/eval-dev/pow.txt", None)
    print("plans spread over the files; groups keep their budgets")


if __name__ == "__main__":
    main()
