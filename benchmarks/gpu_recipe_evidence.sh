#!/usr/bin/env bash
# Issue 21 on one GPU: GPT-2 124M shape on Gutenberg text, the plain recipe vs --recipe modern with the
# same wall-clock budget, data, batch and seq len; both validation-loss curves (tokens and seconds) in one
# PNG, and the tokens / seconds each needs to reach plain's final validation loss (recipe_curves.py).
#
#   one device call (default, <= 9.5 min):  BUDGET=3m30s bash benchmarks/gpu_recipe_evidence.sh one
#   10 minutes each, chained calls on one warm machine (each must start within its 30 s idle window;
#   a late call finds a fresh machine and says so at once; on 2026-12-02 a gap lost the chain after b):
#     smoke  stash the carried parts; both recipes compiled at 124M on synthetic text for a few steps
#     a      stash the parts carried now; prepare all stashed parts; plain starts detached
#     b      plain ends; modern starts detached
#     c      modern ends; curves; then the GPU-marked tests in what time is left (GPU_TESTS=0: none)
#   one arm a call, each call self-contained (a cold machine just prepares again; curves are drawn
#   from the returned metrics with recipe_curves.py wherever the two calls' $OUT files land):
#     BUDGET=7m bash benchmarks/gpu_recipe_evidence.sh plain    then    ... modern
# Needs (carried, ignored by git): Gutenberg .txt.xz parts in .devcarry/gutenberg; the 64 MiB carry
# takes only about three parts, so `smoke` and `a` may each carry different ones: both copy theirs to
# $STASH, which lives as long as the machine does, and `a` prepares everything stashed. GPT-2's
# vocab.json + merges.txt in $BUDGETLM_GPT2_DIR (default .devcarry/tokenizers/gpt2). Results in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
R=runs/gpu_recipe
STASH=${STASH:-/root/gutenberg_stash}
OUT=${OUT:-/tmp/out}
[ -d .devcarry/tokenizers/gpt2 ] && export BUDGETLM_GPT2_DIR=${BUDGETLM_GPT2_DIR:-.devcarry/tokenizers/gpt2}
mkdir -p "$R" "$OUT"
START=$(date +%s)
LIMIT=${LIMIT:-560}  # seconds a phase may take before handing over
MODE=${1:-one}
case "$MODE" in one) BUDGET=${BUDGET:-3m30s};; plain|modern) BUDGET=${BUDGET:-7m};; *) BUDGET=${BUDGET:-10m};; esac  # per arm
# The same shape, data and batch for both arms: 124M (12x768, GPT-2 vocab), 1024 tokens, 512K tokens a step.
# AdamW's lr is nanoGPT's for this size; modern keeps it for embeddings/head and gives Muon its 0.02.
# plain is named: the default recipe (auto) is modern for this shape.
COMMON="--model gpt2-124m --seq-len 1024 --batch-size ${MICRO:-64} --total-batch 524288 --lr 6e-4 --budget $BUDGET
  --eval-points 16 --eval-tokens 1048576 --final-eval-tokens 4194304 --no-progress"

stash() {
  mkdir -p "$STASH"; cp -n .devcarry/gutenberg/*.txt.xz "$STASH"/ 2>/dev/null; ls -la "$STASH"
}

prep() {
  [ -f "$R/data/meta.json" ] && return
  nvidia-smi --query-gpu=name --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  local t0=$(date +%s)
  $PY -m budgetlm prepare --data "$STASH" --tokenizer gpt2 --out "$R/data" \
    --max-tokens "${MAX_TOKENS:-400M}" 2>&1 | tail -3
  echo "prepare took $(( $(date +%s) - t0 )) s"
}

smoke() {  # both recipes at the evidence's shape on synthetic text: compiles, memory, tokens/s
  $PY -m budgetlm prepare --data synth --tokenizer gpt2 --max-tokens 30M --out /tmp/syn 2>&1 | tail -1
  for r in plain modern; do
    $PY -m budgetlm train --data /tmp/syn --out "/tmp/smoke_$r" --model gpt2-124m --seq-len 1024 \
      --batch-size "${MICRO:-64}" --total-batch 524288 --lr 6e-4 --budget 14-steps --recipe "$r" \
      --eval-points 1 --eval-tokens 262144 --no-progress > "$OUT/smoke_$r.log" 2>&1
    echo "== $r rc=$?"; grep -E "model:|compile|trained|tok/s|val |rror" "$OUT/smoke_$r.log" | tail -8
  done
  nvidia-smi --query-gpu=memory.used --format=csv
}

arm() {  # arm NAME [FLAGS...]: train one arm in the foreground
  local name=$1; shift
  rm -rf "$R/$name"
  $PY -m budgetlm train --data "$R/data" --out "$R/$name" $COMMON "$@" > "$R/$name.log" 2>&1
  tail -4 "$R/$name.log"
}

arm_detached() {
  local name=$1; shift
  rm -rf "$R/$name"
  setsid nohup $PY -m budgetlm train --data "$R/data" --out "$R/$name" $COMMON "$@" > "$R/$name.log" 2>&1 < /dev/null &
}

alive() {  # alive NAME: a machine started afresh has no detached run to wait for; say so at once
  [ -e "$R/$1.log" ] || { echo "no $R/$1.log: this is a fresh machine, the chained run is gone (start again at a)"; exit 3; }
}

wait_for() {  # wait_for FILE: until FILE exists or this phase's time is up
  while [ ! -e "$1" ] && [ $(( $(date +%s) - START )) -lt "$LIMIT" ]; do sleep 5; done
  [ -e "$1" ]
}

curves() {
  $PY benchmarks/recipe_curves.py "$OUT/recipe_curves_124m.png" "$R/plain=plain" "$R/modern=modern" \
    --json "$OUT/recipe_curves_124m.json"
  export_arm plain; export_arm modern
}

export_arm() {  # export_arm NAME: its eval curve and summary into $OUT
  cp "$R/$1/summary.json" "$OUT/${1}_summary.json"; cp "$R/$1/metrics.jsonl" "$OUT/${1}_metrics.jsonl"
  tail -15 "$R/$1.log" > "$OUT/${1}_log_tail.txt"
}

case "$MODE" in
plain|modern)
  stash
  prep
  if [ "$MODE" = plain ]; then arm plain --recipe plain; else arm modern --recipe modern; fi
  export_arm "$MODE"
  ;;
smoke)
  stash
  smoke
  ;;
one)
  stash
  prep
  arm plain --recipe plain
  arm modern --recipe modern
  curves
  ;;
a)
  stash
  prep
  arm_detached plain --recipe plain
  wait_for "$R/plain/summary.json"; tail -3 "$R/plain.log"
  ;;
b)
  alive plain
  wait_for "$R/plain/summary.json" || { echo "plain not finished"; tail -20 "$R/plain.log"; exit 1; }
  arm_detached modern --recipe modern
  wait_for "$R/modern/summary.json"; tail -3 "$R/modern.log"
  ;;
c)
  alive modern
  wait_for "$R/modern/summary.json" || { echo "modern not finished"; tail -20 "$R/modern.log"; exit 1; }
  curves
  left=$(( LIMIT - ($(date +%s) - START) - 15 ))
  [ "${GPU_TESTS:-1}" = 1 ] && [ "$left" -gt 60 ] && timeout "$left" $PY -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/gputests.log"
  ;;
*)
  echo "usage: $0 smoke|one|plain|modern|a|b|c"; exit 2
  ;;
esac
