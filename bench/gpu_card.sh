#!/usr/bin/env bash
# The GPU checks and the card profile on a borrowed GPU machine, in one call.
#
# Usage (on the GPU machine, from the repository root):
#   OUT=/some/folder DEADLINE=560 bash bench/gpu_card.sh
#
# Expects, next to the checkout:
#   .gpuws/   the card study's workspace after its data phase, made on another machine with
#             `python bench/trim_workspace.py SOURCE_WS /tmp/cardgpu` and moved here (it is
#             copied back to /tmp/cardgpu, the path its records name)
#   .whl/     optional: wheels of the packages the machine's Python lacks (duckdb, pydantic, ...)
# Runs, in order: bench/gpu_identity.py (which operation of a step differs between a run
# alone and the same run in a stack), tests/test_cuda.py (each algorithm trains on the GPU and
# acts on a CPU; same seed, same bytes; a stack's runs = alone; resume = uninterrupted; an
# evaluation on the GPU = the CPU's to rounding), bench/evaluate.py --device cuda --device cpu
# (one evaluation at the card's size with the behaviour model and FQE on the GPU, then the
# same on the CPU: seconds per phase and the FQE's difference), then the card study after its
# data phase on the GPU (`bench/study.py --reuse-data`, train.device=cuda and
# evaluation.device=cuda), stopped with SIGINT at DEADLINE seconds after the start if it has not
# finished (a second call on the same machine resumes it: finished units are kept). GPU load
# is sampled every 5 s (nvidia-smi dmon). Everything lands in $OUT: env.txt,
# gpu_identity.log/.json, test_cuda.log, evaluate.log, study.log, dmon.log, study-card20k-gpu.json (when the
# study finished) and records.tgz (the study's own records and every evaluation's timings).
set -u
OUT=${OUT:-/tmp/gpu_card_out}
DEADLINE=${DEADLINE:-560}
WS=/tmp/cardgpu
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u; nproc; free -g | head -2; nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv
  python3 -c "import sys, torch, numpy; print(sys.version); print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.is_available()); print('numpy', numpy.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# which operation of a step differs between a run alone and the same run in a stack (seconds)
timeout 60 python3 bench/gpu_identity.py --device cuda --out "$OUT/gpu_identity.json" \
  > "$OUT/gpu_identity.log" 2>&1
cat "$OUT/gpu_identity.log"

if [ ! -f /tmp/cuda_tested ]; then
  timeout 240 python3 -m pytest tests/test_cuda.py -rA -p no:cacheprovider -q \
    > "$OUT/test_cuda.log" 2>&1
  echo "test_cuda exit $?" | tee -a "$OUT/test_cuda.log"
  tail -15 "$OUT/test_cuda.log"
  touch /tmp/cuda_tested
fi

if [ ! -f /tmp/evaluate_benched ]; then
  timeout 240 python3 bench/evaluate.py --device cuda --device cpu > "$OUT/evaluate.log" 2>&1
  echo "bench/evaluate.py exit $?" | tee -a "$OUT/evaluate.log"
  tail -12 "$OUT/evaluate.log"
  touch /tmp/evaluate_benched
fi

[ -d "$WS" ] || cp -r .gpuws "$WS"
nvidia-smi dmon -s um -d 5 > "$OUT/dmon.log" 2>&1 &
DMON=$!
LEFT=$((DEADLINE - ($(date +%s) - START)))
echo "study: $LEFT s left"
timeout -s INT -k 30 "$LEFT" python3 bench/study.py --profile card --stays 20000 \
  --workspace "$WS" --reuse-data --set train.device=cuda --set evaluation.device=cuda --set workers=8 \
  --set threads_per_worker=2 --out "$OUT/study-card20k-gpu.json" >> "$OUT/study.log" 2>&1
echo "study exit $?" | tee -a "$OUT/study.log"
kill $DMON 2>/dev/null
(cd "$WS" && tar czf "$OUT/records.tgz" --ignore-failed-read study/*.json \
  $(ls eval/*/metrics.json 2>/dev/null) $(ls runs/*/*/config.json runs/*/config.json 2>/dev/null)) \
  2>/dev/null
grep -v "^\s*$" "$OUT/study.log" | tail -40
awk 'NR>2 && $1 ~ /^[0-9]+$/ {n++; s+=$2} END {if (n) printf "GPU busy (dmon sm%%): mean %.0f%% over %d samples\n", s/n, n}' "$OUT/dmon.log"
