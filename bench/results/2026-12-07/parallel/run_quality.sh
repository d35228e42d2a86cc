#!/bin/bash
# Bits per byte of both designs on the same chunks (standard domains: essays, repeat, stdlib),
# window 128, shard by shard (chunks I, I+4, ... of each domain), so that the shards done
# add up (tools/quality.py --shard; bench/results/2026-12-07/parallel/combine.py).
# W: the codebooks of commands.sh. Usage: run_quality.sh SHARD...
set -e
W=${W:-/tmp/pkv}; R=bench/results/2026-12-07/parallel
Q="/usr/bin/python3 tools/quality.py --library build-cpu/libcommvq.so --threads 2 --mse-chunks 0"
for s in "$@"; do
  $Q --shard $s/4 --settings exact,commvq-1bit-w128 --codebook 1=$W/full-1bit.safetensors \
     --results $R/q-s$s-full.json
  for I in 256 512; do
    $Q --shard $s/4 --settings commvq-1bit-w128 \
       --codebook-per-head 1=$W/perhead-i$I-1bit.head0.safetensors,$W/perhead-i$I-1bit.head1.safetensors \
       --results $R/q-s$s-perhead-i$I.json
  done
done
