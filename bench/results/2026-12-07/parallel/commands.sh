# Per-head codebooks against the shipped (exchange) design, trained alike on the
# dev CPU (2 cores), reduced scale. From the repository root; W is a scratch dir.
D=/work/shared/data; W=/tmp/pkv; R=bench/results/2026-12-07/parallel
# 1. calibration KV: 8192 tokens per layer from calib-text + 8192 from calib-code
/usr/bin/python3 tools/collect_kv.py -o $W/m8.safetensors --take 8192 $D/calib-text/*.txt --take 8192 $D/calib-code/*.py
# 2. full design: one codebook over both KV heads, token scales, value encoder D=256 -> 512
COMMON="--bits 1 --model-name bytellama-13m --rope-theta 500000 --storage f16 --threads 2 --max-samples 16384 --key-steps 10 --value-steps 500 --seed 0"
build-cpu/tools/commvq-train -i $W/m8.safetensors -o $W/full-1bit.safetensors $COMMON --value-hidden 512
# 3. per-head design: the KV file split by KV head (keys/values of head h, queries of its 2 q heads),
#    one 1-KV-head codebook per head, same options; value encoder d=128 -> 256 per head (the two
#    heads' encoders together about the size of the full design's), and -> 512 per head
/usr/bin/python3 tools/split_kv_heads.py $W/m8.safetensors $W/m8
for I in 256 512; do for h in 0 1; do
  build-cpu/tools/commvq-train -i $W/m8.head$h.safetensors -o $W/perhead-i$I-1bit.head$h.safetensors $COMMON --value-hidden $I
done; done
# a check of the per-head path on the trained codebooks: cache vs exact attention over decoded tokens (shard 0/4)
/usr/bin/python3 tools/quality.py --library build-cpu/libcommvq.so --threads 2 --mse-chunks 0 --shard 0/4 --settings commvq-1bit-w128 --check-decoded --codebook-per-head 1=$W/perhead-i256-1bit.head0.safetensors,$W/perhead-i256-1bit.head1.safetensors --results $R/check-decoded-s0-perhead-i256.json
