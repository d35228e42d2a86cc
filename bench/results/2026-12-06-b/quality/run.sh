#!/bin/bash
# $1 = list of "bits=file" ; runs quality.py on the grid's texts (all shards) for each
cd /work/main
E=/work/shared/data/eval-dev
STD=$(cd $E && ls stdlib/*.py stdlib/*/*.py stdlib/*/*/*.py 2>/dev/null | sort)
ARGS=$(head -1 /tmp/cal/logs/q-exact-s0.log | sed 's/^# //' | sed 's#/work/main/.deps/shared#/work/shared#g' | sed 's#/opt/torch/.venv/bin/python3#/usr/bin/python3#' | sed 's# --settings.*##')
for job in "$@"; do
  name=${job%%:*}; rest=${job#*:}
  echo "== $name $(date -u +%T)"
  eval nice -n 5 $ARGS --library build-cpu/libcommvq.so $rest --results /tmp/q/$name.json > /tmp/q/$name.log 2>&1
  echo "exit $? $(date -u +%T)"; tail -3 /tmp/q/$name.log
done
