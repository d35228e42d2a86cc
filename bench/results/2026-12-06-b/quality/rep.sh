#!/bin/bash
cd /work/main
E=/work/shared/data/eval-dev
for job in "1:/tmp/q/bytellama-13m-1b-m64-s100-i512-v1000.safetensors:exact,commvq-1bit-w128" "2:/tmp/q/bytellama-13m-2b-m32-s100-i1024-v3000.safetensors:commvq-2bit-w128"; do
  IFS=: read b f s <<< "$job"
  echo "== $b $(date -u +%T)"
  nice -n 5 /usr/bin/python3 tools/quality.py --model /work/shared/models/bytellama-13m --eval-dir $E --threads 1 --device cpu --mse-chunks 0 \
    --repeat repeat:$E/addiction.txt --library build-cpu/libcommvq.so --codebook $b=$f --settings $s --results /tmp/q/repeat-$b.json > /tmp/q/repeat-$b.log 2>&1
  echo "exit $? $(date -u +%T)"; tail -n 3 /tmp/q/repeat-$b.log
done
