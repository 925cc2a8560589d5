#!/usr/bin/env bash
# One device call for issue 19's check and issue 21's first GPU contact: bench of today's code
# against .devcarry/base (refactor_bench_check.sh), then the trainer on synthetic data with the
# plain and the modern recipe (Muon, qk-norm, relu2, soft-cap, value embeddings, ... compiled on
# CUDA), then the GPU-marked tests. Logs in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
bash benchmarks/refactor_bench_check.sh 2>&1 | tee "$OUT/bench.log"
$PY -m budgetlm prepare --data synth --tokenizer bpe:1024 --max-tokens 2M --out /tmp/syn > /dev/null 2>&1
for r in plain modern; do
  $PY -m budgetlm train --data /tmp/syn --model 4x256 --seq-len 256 --batch-size 32 --budget 150-steps \
    --recipe "$r" --out "/tmp/r_$r" --no-progress 2>&1 | grep -E "model:|compile|trained|val bits|error" | tee -a "$OUT/recipe.log"
done
timeout "${TEST_S:-150}" $PY -m pytest -q -x -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/gputests.log"
