#!/usr/bin/env bash
# Issue 19's device check: `bench` of the GPT-2 124M fast path and the TinyLlama shape, today's
# checkout against an older one (carried as .devcarry/base, e.g. `git archive COMMIT budgetlm`),
# in one call, interleaved old/new/new/old for the 124M so drift shows. Rows land in $OUT/rows.jsonl;
# the table at the end gives new/old per shape.
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OLD=${OLD:-.devcarry/base}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
one() {  # one LABEL DIR ARGS...: a bench run from checkout DIR, its row tagged with LABEL
  local label=$1 dir=$2; shift 2
  (cd "$dir" && $PY -m budgetlm bench "$@" --results "$OUT/rows_$label.jsonl" 2>&1 | tail -2)
  tail -1 "$OUT/rows_$label.jsonl" | $PY -c "import json,sys; r=json.loads(sys.stdin.read()); r['arm']='$label'; print(json.dumps(r))" >> "$OUT/rows.jsonl"
}
G="--model gpt2-124m --seq 1024 --micro-batch 32 --accum 4 --steps 20"
T="--model tinyllama-1.1b --seq 1024 --micro-batch 8 --steps 10"
one old_g "$OLD" $G
one new_g . $G
one new_g . $G
one old_g "$OLD" $G
one old_t "$OLD" $T
one new_t . $T
$PY - "$OUT/rows.jsonl" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["arm"], []).append(r["tokens_per_s"])
for shape in ("g", "t"):
    o, n = by.get(f"old_{shape}"), by.get(f"new_{shape}")
    if o and n:
        print(f"{shape}: old {statistics.mean(o):,.0f} tok/s {o}  new {statistics.mean(n):,.0f} {n}  new/old {statistics.mean(n)/statistics.mean(o):.4f}")
PYEOF
rm -f "$OUT"/rows_*.jsonl
