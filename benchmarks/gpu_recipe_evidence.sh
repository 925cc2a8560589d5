#!/usr/bin/env bash
# Issue 21 on one GPU: GPT-2 124M shape on Gutenberg text, the plain recipe vs --recipe modern with the
# same wall-clock budget, data, batch and seq len; both validation-loss curves (tokens and seconds) in one
# PNG, and the tokens / seconds each needs to reach plain's final validation loss (recipe_curves.py).
#
#   one device call (default, <= 9.5 min):  BUDGET=3m30s bash benchmarks/gpu_recipe_evidence.sh one
#   10 minutes each, three chained calls:   bash benchmarks/gpu_recipe_evidence.sh a   (prep; plain starts detached)
#                                           bash benchmarks/gpu_recipe_evidence.sh b   (plain ends; modern starts)
#                                           bash benchmarks/gpu_recipe_evidence.sh c   (modern ends; curves)
# Needs (carried, ignored by git): .devcarry/gutenberg/*.txt.xz; GPT-2's vocab.json + merges.txt in
# $BUDGETLM_GPT2_DIR (default .devcarry/tokenizers/gpt2 when present). Results land in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
R=runs/gpu_recipe
OUT=${OUT:-/tmp/out}
[ -d .devcarry/tokenizers/gpt2 ] && export BUDGETLM_GPT2_DIR=${BUDGETLM_GPT2_DIR:-.devcarry/tokenizers/gpt2}
mkdir -p "$R" "$OUT"
START=$(date +%s)
LIMIT=${LIMIT:-560}  # seconds a phase may take before handing over
MODE=${1:-one}
if [ "$MODE" = one ]; then BUDGET=${BUDGET:-3m30s}; else BUDGET=${BUDGET:-10m}; fi  # per arm
# The same shape, data and batch for both arms: 124M (12x768, GPT-2 vocab), 1024 tokens, 512K tokens a step.
# AdamW's lr is nanoGPT's for this size; modern keeps it for embeddings/head and gives Muon its 0.02.
COMMON="--model gpt2-124m --seq-len 1024 --batch-size ${MICRO:-64} --total-batch 524288 --lr 6e-4 --budget $BUDGET
  --eval-points 10 --eval-tokens 1048576 --final-eval-tokens 4194304 --no-progress"

prep() {
  [ -f "$R/data/meta.json" ] && return
  nvidia-smi --query-gpu=name --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  $PY -m budgetlm prepare --data .devcarry/gutenberg --tokenizer gpt2 --out "$R/data" \
    --max-tokens "${MAX_TOKENS:-150M}" 2>&1 | tail -3
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

wait_for() {  # wait_for FILE: until FILE exists or this phase's time is up
  while [ ! -e "$1" ] && [ $(( $(date +%s) - START )) -lt "$LIMIT" ]; do sleep 5; done
  [ -e "$1" ]
}

curves() {
  $PY benchmarks/recipe_curves.py "$OUT/recipe_curves_124m.png" "$R/plain=plain" "$R/modern=modern" \
    --json "$OUT/recipe_curves_124m.json"
  for a in plain modern; do
    cp "$R/$a/summary.json" "$OUT/${a}_summary.json"; cp "$R/$a/metrics.jsonl" "$OUT/${a}_metrics.jsonl"
    tail -15 "$R/$a.log" > "$OUT/${a}_log_tail.txt"
  done
}

case "$MODE" in
one)
  prep
  arm plain
  arm modern --recipe modern
  curves
  ;;
a)
  prep
  arm_detached plain
  wait_for "$R/plain/summary.json"; tail -3 "$R/plain.log"
  ;;
b)
  wait_for "$R/plain/summary.json" || { echo "plain not finished"; tail -20 "$R/plain.log"; exit 1; }
  arm_detached modern --recipe modern
  wait_for "$R/modern/summary.json"; tail -3 "$R/modern.log"
  ;;
c)
  wait_for "$R/modern/summary.json" || { echo "modern not finished"; tail -20 "$R/modern.log"; exit 1; }
  curves
  ;;
*)
  echo "usage: $0 one|a|b|c"; exit 2
  ;;
esac
