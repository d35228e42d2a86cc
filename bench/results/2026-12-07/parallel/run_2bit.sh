#!/bin/bash
# 2 bits, the same calibration KV and options as 1 bit (commands.sh); value encoder
# I = 1024 for the full design (the shipped 2-bit width) and 512 per head (the same total).
# Then quality shard by shard as run_quality.sh (the exact rows are the 1-bit run's, same chunks).
set -e
W=${W:-/tmp/pkv}; R=bench/results/2026-12-07/parallel
COMMON="--bits 2 --model-name bytellama-13m --rope-theta 500000 --storage f16 --threads 2 --max-samples 16384 --key-steps 10 --value-steps 500 --seed 0"
( time build-cpu/tools/commvq-train -i $W/m8.safetensors -o $W/full-2bit.safetensors $COMMON --value-hidden 1024 ) \
  > $R/train-full-2bit.log 2>&1
for h in 0 1; do
  ( time build-cpu/tools/commvq-train -i $W/m8.head$h.safetensors -o $W/perhead-i512-2bit.head$h.safetensors $COMMON --value-hidden 512 ) \
    > $R/train-perhead-i512-2bit.head$h.log 2>&1
done
Q="/usr/bin/python3 tools/quality.py --library build-cpu/libcommvq.so --threads 2 --mse-chunks 0"
for s in "$@"; do
  date -u; echo shard $s
  $Q --shard $s/4 --settings commvq-2bit-w128 --codebook 2=$W/full-2bit.safetensors --results $R/q2-s$s-full.json
  $Q --shard $s/4 --settings commvq-2bit-w128 \
     --codebook-per-head 2=$W/perhead-i512-2bit.head0.safetensors,$W/perhead-i512-2bit.head1.safetensors \
     --results $R/q2-s$s-perhead-i512.json
done
date -u
