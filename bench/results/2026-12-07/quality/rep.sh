#!/bin/bash
# The repeat domain (tools/quality.py --repeat, addiction.txt) for the 1-bit codebook
# shipped on 2026-12-07 (v3000) and, as a check that the run reproduces the
# 2026-12-06 figure, the file it replaces (v1000); dev CPU, 2 threads.
cd /work/main
E=/work/shared/data/eval-dev
for job in "v3000:data/codebooks/bytellama-13m-1bit.safetensors:exact,commvq-1bit-w128,commvq-1bit-w0" "v1000:/tmp/cb/bytellama-13m-1b-m64-s100-i512-v1000.safetensors:exact,commvq-1bit-w128"; do
  IFS=: read n f s <<< "$job"
  echo "== $n $(date -u +%T)"
  /usr/bin/python3 tools/quality.py --model /work/shared/models/bytellama-13m --eval-dir $E --threads 2 --device cpu --mse-chunks 0 \
    --repeat repeat:$E/addiction.txt --library build-cpu/libcommvq.so --codebook 1=$f --settings $s --results /tmp/q7/repeat-$n.json > /tmp/q7/repeat-$n.log 2>&1
  echo "exit $? $(date -u +%T)"; tail -n 4 /tmp/q7/repeat-$n.log
done
