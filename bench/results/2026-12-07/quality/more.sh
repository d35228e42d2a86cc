#!/bin/bash
# 1) the repeat case on six more held-out files (3 essays, 3 stdlib files; 4 pieces each), both 1-bit files
# 2) essays + stdlib (the grid's texts, all chunks) for the new file, windows 128 and 0, on this CPU
# As run, both repeat6 runs wrote one results file, so the second (v1000) replaced the first's commvq
# row: that file is repeat6-v1000.json. The v3000 run was then repeated alone with the same command
# and --results repeat6-v3000.json (the same figures as its first log, every printed digit).
cd /work/main
E=/work/shared/data/eval-dev
R="--repeat r-langdes:$E/langdes.txt --repeat r-laundry:$E/laundry.txt --repeat r-vcsqueeze:$E/vcsqueeze.txt --repeat r-typing:$E/stdlib/typing.py --repeat r-inspect:$E/stdlib/inspect.py --repeat r-mock:$E/stdlib/unittest/mock.py"
for job in "v3000:data/codebooks/bytellama-13m-1bit.safetensors:exact,commvq-1bit-w128" "v1000:/tmp/cb/bytellama-13m-1b-m64-s100-i512-v1000.safetensors:commvq-1bit-w128"; do
  IFS=: read n f s <<< "$job"
  echo "== repeat6 $n $(date -u +%T)"
  /usr/bin/python3 tools/quality.py --model /work/shared/models/bytellama-13m --eval-dir $E --threads 2 --device cpu --mse-chunks 0 \
    $R --library build-cpu/libcommvq.so --codebook 1=$f --settings $s --results /tmp/q7/repeat6.json > /tmp/q7/repeat6-$n.log 2>&1
  echo "exit $? $(date -u +%T)"; tail -n 3 /tmp/q7/repeat6-$n.log
done
ARGS=$(head -1 /tmp/calx/logs/q-exact-s0.log | sed 's/^# //' | sed 's#/work/main/.deps/shared#/work/shared#g' | sed 's#/opt/torch/.venv/bin/python3#/usr/bin/python3#' | sed 's# --settings.*##' | sed 's#--threads 1#--threads 2#')
echo "== grid texts v3000 $(date -u +%T)"
eval $ARGS --library build-cpu/libcommvq.so --codebook 1=data/codebooks/bytellama-13m-1bit.safetensors --settings exact,commvq-1bit-w128,commvq-1bit-w0 --results /tmp/q7/grid-v3000.json > /tmp/q7/grid-v3000.log 2>&1
echo "exit $? $(date -u +%T)"; tail -n 4 /tmp/q7/grid-v3000.log
