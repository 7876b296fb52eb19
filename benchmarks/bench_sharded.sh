#!/usr/bin/env bash
# Run an experiment suite with N shard processes sharing one output folder (one GPU, or many cores),
# then one unsharded pass that trains the leftovers (a `top` grid ranked on other shards' results,
# a run a shard missed) and writes the report.  Rerunning continues from the cache.
#
#   benchmarks/bench_sharded.sh SUITE OUT N DEVICE [SECONDS_PER_SHARD]
#   e.g. benchmarks/bench_sharded.sh paper bench/paper 12 cuda
#
# Each shard logs to OUT/shard<I>.log.  PYTHON picks the interpreter (default python3).
set -u
if [ $# -lt 4 ]; then
  echo "usage: $0 SUITE OUT N DEVICE [SECONDS_PER_SHARD]" >&2
  exit 2
fi
suite=$1 out=$2 n=$3 device=$4 limit=${5:-0}
py=${PYTHON:-python3}
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$out"
t0=$(date +%s)
for ((i = 0; i < n; i++)); do
  if [ "$limit" -gt 0 ]; then
    timeout "$limit" "$py" -m coophash bench "$suite" --out "$out" --device "$device" --shard "$i/$n" \
      --keep-going --quiet --threads 1 >"$out/shard$i.log" 2>&1 &
  else
    "$py" -m coophash bench "$suite" --out "$out" --device "$device" --shard "$i/$n" \
      --keep-going --quiet --threads 1 >"$out/shard$i.log" 2>&1 &
  fi
done
wait
echo "shards finished after $(( $(date +%s) - t0 )) s"
grep -h "FAILED" "$out"/shard*.log || true
"$py" -m coophash bench "$suite" --out "$out" --device "$device" --keep-going --quiet
