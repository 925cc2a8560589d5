#!/usr/bin/env bash
# The main job on one GPU, on real text, as a user runs it, with its anchors in the same machine
# session (issue 20's evidence). Three device calls, each under the 10-minute limit; the long runs
# start detached (setsid) so one call can hand over to the next while the machine stays warm:
#
#   A: bash benchmarks/gpu_speedrun_evidence.sh a   speedrun 2m + bench of its shape + HellaSwag; start the 10m run
#   B: bash benchmarks/gpu_speedrun_evidence.sh b   wait for the 10m run; HellaSwag; start nanoGPT for 10m
#   C: bash benchmarks/gpu_speedrun_evidence.sh c   wait for nanoGPT; score it on the same held-out books;
#                                                   bench of the 10m run's shape (last: the GPU is free again)
# nanoGPT's max_iters comes from a predicted rate (nanogpt_anchor.py --tok-per-s auto), not a
# calibration run, to fit the session's 30 device minutes; its measured iteration time is reported.
#
# Needs (carried, ignored by git): .devcarry/gutenberg/*.txt.xz, .devcarry/hellaswag/hellaswag_val.jsonl.xz,
# .devcarry/nanogpt/{train.py,model.py,configurator.py,config/train_gpt2.py} (a karpathy/nanoGPT snapshot).
# Each phase copies its logs and JSON into $OUT (at most 8 files come back).
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
R=runs/gpu
DATA=.devcarry/gutenberg
HS=.devcarry/hellaswag/hellaswag_val.jsonl.xz
OUT=${OUT:-/tmp/out}
mkdir -p "$R" "$OUT"
START=$(date +%s)
LIMIT=${LIMIT:-570}  # seconds a phase may take before handing over

wait_for() {  # wait_for FILE: until FILE exists or this phase's time is up
  while [ ! -e "$1" ] && [ $(( $(date +%s) - START )) -lt "$LIMIT" ]; do sleep 5; done
  [ -e "$1" ]
}

idle_until_limit() {  # keep the call (and so the machine) alive while a detached run works
  while [ $(( $(date +%s) - START )) -lt "$LIMIT" ] && [ ! -e "$1" ]; do sleep 5; done
}

bench_run() {  # bench_run RUN: time the run's own shape with bench, in this call
  $PY -m budgetlm bench --from-run "$1" --steps 30 --results "$R/bench_rows.jsonl" 2>&1 | tee "$1.bench.log" | tail -5
}

hellaswag() {  # hellaswag RUN: all 10,042 items
  $PY -m budgetlm eval "$1" --hellaswag --hellaswag-file "$HS" --out "$1.hellaswag.json" 2>&1 | tail -3
}

case "${1:-}" in
a)
  nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  rm -rf data_cache "$R"/s2m "$R"/s10m
  $PY -m budgetlm speedrun --budget 2m --data "$DATA" --out "$R/s2m" --no-progress 2>&1 | tee "$R/s2m.log"
  bench_run "$R/s2m"
  hellaswag "$R/s2m"
  rm -rf data_cache  # the 10m run starts cold, as a user's first run does
  setsid nohup $PY -m budgetlm speedrun --budget 10m --data "$DATA" --out "$R/s10m" --no-progress \
    > "$R/s10m.log" 2>&1 < /dev/null &
  cp "$R/s2m.log" "$R/s2m.bench.log" "$R/s2m.hellaswag.json" "$OUT/" 2>/dev/null
  cp "$R/s2m/summary.json" "$OUT/s2m_summary.json"
  [ -f "$R/s2m/samples.json" ] && cp "$R/s2m/samples.json" "$OUT/s2m_samples.json"
  idle_until_limit "$R/s10m/summary.json"
  tail -5 "$R/s10m.log"
  ;;
b)
  wait_for "$R/s10m/summary.json" || { echo "10m run not finished"; tail -20 "$R/s10m.log"; exit 1; }
  while pgrep -f "speedrun --budget 10m" > /dev/null; do sleep 2; done  # samples come after the summary
  DDIR=$($PY -c "import json,sys; print(json.load(open('$R/s10m/summary.json'))['data_dir'])")
  $PY benchmarks/nanogpt_anchor.py bins "$DDIR" "$R/nanogpt" && echo "$DDIR" > "$R/nanogpt/data_dir"
  # NANOGPT_SECONDS: the anchor's wall clock (the 10m run's, or the 2m run's when device time is short)
  $PY benchmarks/nanogpt_anchor.py run .devcarry/nanogpt "$R/nanogpt" --seconds "${NANOGPT_SECONDS:-600}" \
    --tok-per-s auto 2>&1 | tail -25
  $PY benchmarks/nanogpt_anchor.py score "$R/nanogpt" "$DDIR" | tee "$R/nanogpt_score.log"
  hellaswag "$R/s10m"
  bench_run "$R/s10m"
  tail -60 "$R/nanogpt/train.log" > "$R/nanogpt_train_tail.log"
  tar czf "$OUT/evidence_b.tgz" "$R/s10m.log" "$R/s10m/summary.json" "$R/s10m/samples.json" "$R/s10m/metrics.jsonl" \
    "$R/s2m/metrics.jsonl" "$R/nanogpt/run.json" "$R/nanogpt/score.json" "$R/nanogpt/bins.json" \
    "$R/nanogpt_train_tail.log" "$R/s10m.hellaswag.json" "$R/s10m.bench.log" "$R/bench_rows.jsonl" \
    "$DDIR/meta.json" 2>&1 | tail -3
  ;;
c)
  wait_for "$R/nanogpt/run.json" || { echo "nanoGPT not finished"; tail -20 "$R/nanogpt.log"; exit 1; }
  $PY benchmarks/nanogpt_anchor.py score "$R/nanogpt" "$(cat "$R/nanogpt/data_dir")" | tee "$R/nanogpt_score.log"
  cp "$R/nanogpt/run.json" "$R/nanogpt/score.json" "$OUT/" 2>/dev/null
  tail -40 "$R/nanogpt/train.log" > "$OUT/nanogpt_train_tail.log"
  hellaswag "$R/s10m"
  bench_run "$R/s10m"
  cp "$R/s10m.hellaswag.json" "$R/s10m.bench.log" "$R/bench_rows.jsonl" "$OUT/" 2>/dev/null
  [ -f "$R/s10m/samples.json" ] && cp "$R/s10m/samples.json" "$OUT/s10m_samples.json"
  ;;
short)
  # One call when device time is short: the 2m speedrun cold, bench of its shape, nanoGPT for the
  # same 2 minutes on the same tokens, both scored on the same held-out books, then the 2m speedrun
  # again on its cached data (no tokenizing: data wait and first step without the producer).
  nvidia-smi --query-gpu=name,power.limit --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  rm -rf data_cache "$R"/s2m "$R"/s2m_warm "$R"/nanogpt
  $PY -m budgetlm speedrun --budget 2m --data "$DATA" --out "$R/s2m" --no-progress 2>&1 | tee "$R/s2m.log" | grep -v "^$" | tail -12
  bench_run "$R/s2m"
  hellaswag "$R/s2m"
  DDIR=$($PY -c "import json,sys; print(json.load(open('$R/s2m/summary.json'))['data_dir'])")
  $PY benchmarks/nanogpt_anchor.py bins "$DDIR" "$R/nanogpt"
  $PY benchmarks/nanogpt_anchor.py run .devcarry/nanogpt "$R/nanogpt" --seconds 120 --tok-per-s auto 2>&1 | grep -v '"tail"' | tail -22
  $PY benchmarks/nanogpt_anchor.py score "$R/nanogpt" "$DDIR" | tee "$R/nanogpt_score.log"
  $PY -m budgetlm speedrun --budget 2m --data "$DATA" --out "$R/s2m_warm" --no-progress 2>&1 | tee "$R/s2m_warm.log" | grep -v "^$" | tail -6
  tail -60 "$R/nanogpt/train.log" > "$R/nanogpt_train_tail.log"
  tar czf "$OUT/evidence_short.tgz" "$R/s2m.log" "$R/s2m/summary.json" "$R/s2m/samples.json" "$R/s2m/metrics.jsonl" \
    "$R/s2m_warm.log" "$R/s2m_warm/summary.json" "$R/s2m_warm/metrics.jsonl" "$R/nanogpt/run.json" \
    "$R/nanogpt/score.json" "$R/nanogpt/bins.json" "$R/nanogpt_train_tail.log" "$R/s2m.hellaswag.json" \
    "$R/s2m.bench.log" "$R/bench_rows.jsonl" "$DDIR/meta.json" 2>&1 | tail -3
  ;;
ten1)
  # The 10-minute pair alone (the 2m set was measured in an earlier session), three chained calls:
  # ten1 starts the 10m speedrun cold and keeps the machine; ten2 scores it (HellaSwag, bench of its
  # shape) and only then starts nanoGPT for 600 s on the same tokens, so nothing shares its GPU;
  # ten3 waits for nanoGPT and scores it on the same held-out books.
  nvidia-smi --query-gpu=name,power.limit --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  rm -rf data_cache "$R"/s10m "$R"/nanogpt
  setsid nohup $PY -m budgetlm speedrun --budget 10m --data "$DATA" --out "$R/s10m" --no-progress \
    > "$R/s10m.log" 2>&1 < /dev/null &
  idle_until_limit "$R/s10m/summary.json"
  tail -5 "$R/s10m.log"
  ;;
ten2)
  wait_for "$R/s10m/summary.json" || { echo "10m run not finished"; tail -20 "$R/s10m.log"; exit 1; }
  while pgrep -f "speedrun --budget 10m" > /dev/null; do sleep 2; done  # samples come after the summary
  tail -12 "$R/s10m.log"
  DDIR=$($PY -c "import json,sys; print(json.load(open('$R/s10m/summary.json'))['data_dir'])")
  hellaswag "$R/s10m"
  bench_run "$R/s10m"
  $PY benchmarks/nanogpt_anchor.py bins "$DDIR" "$R/nanogpt" > /dev/null && echo "$DDIR" > "$R/nanogpt/data_dir"
  setsid nohup $PY benchmarks/nanogpt_anchor.py run .devcarry/nanogpt "$R/nanogpt" --seconds "${NANOGPT_SECONDS:-600}" \
    --tok-per-s auto > "$R/nanogpt.log" 2>&1 < /dev/null &
  cp "$R/s10m.log" "$R/s10m/summary.json" "$R/s10m.hellaswag.json" "$R/s10m.bench.log" "$R/bench_rows.jsonl" "$OUT/" 2>/dev/null
  [ -f "$R/s10m/samples.json" ] && cp "$R/s10m/samples.json" "$OUT/s10m_samples.json"
  cp "$R/s10m/metrics.jsonl" "$OUT/s10m_metrics.jsonl"
  idle_until_limit "$R/nanogpt/run.json"
  ;;
ten3)
  wait_for "$R/nanogpt/run.json" || { echo "nanoGPT not finished"; tail -20 "$R/nanogpt.log"; exit 1; }
  $PY benchmarks/nanogpt_anchor.py score "$R/nanogpt" "$(cat "$R/nanogpt/data_dir")" | tee "$R/nanogpt_score.log"
  cp "$R/nanogpt/run.json" "$R/nanogpt/score.json" "$R/nanogpt/bins.json" "$OUT/" 2>/dev/null
  tail -40 "$R/nanogpt/train.log" > "$OUT/nanogpt_train_tail.log"
  ;;
*)
  echo "usage: $0 a|b|c|short|ten1|ten2|ten3"; exit 2 ;;
esac
