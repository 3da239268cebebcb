#!/usr/bin/env bash
# One GPU call for issue 18: the FLUX.1-dev-shaped checkpoint, then benchmarks/compress_sweep.py (compressed vs
# raw streaming at the points of POINTS, one process, interleaved; output digests raw/compressed/raw).
#   source .gpu-kit/setup_on_gpu.sh; BUDGET_S=540 bash benchmarks/compress_call.sh [sweep|e2e]   (repo root)
# e2e: the plugin end to end (`SGLANG_AUTOPERF=1 sglang generate`, 20 steps) beside a ballast leaving FREE_GIB (16)
# free: a cold tuning cache (warmup calibrates the placement; the request measures compressed vs raw) then a warm one.
# Writes under $OUT: compress.tar.gz (the sweep's folder), summary.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; BUDGET_S=${BUDGET_S:-540}; T0=$(date +%s); W=/tmp/compress; rm -rf "$W"; mkdir -p "$W" "$OUT"
POINTS=${POINTS:-benchmarks/results/2026-11-29-h200-compress/points.json}
export PYTHONUNBUFFERED=1
say() { echo "[compress-call $(( $(date +%s) - T0 ))s] $*" | tee -a "$W/summary.txt"; }
say "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"
m=$(python3 benchmarks/make_checkpoints.py flux.1-dev --root /tmp/models --print-path | tail -1)
[ -f "$m/_source.json" ] || python3 benchmarks/make_checkpoints.py flux.1-dev --root /tmp/models > "$W/build.log" 2>&1
say "checkpoint: $(tail -1 "$W/build.log" 2>/dev/null) $m"
if [ "${1:-sweep}" = e2e ]; then
  d=$W/e2e; mkdir -p "$d"
  python3 benchmarks/ballast.py --free-gib "${FREE_GIB:-16}" --ready-file "$d/ballast.json" --parent-pid $$ > "$d/ballast.log" 2>&1 &
  bp=$!; t=0; while [ ! -s "$d/ballast.json" ] && [ $t -lt 120 ]; do sleep 1; t=$((t + 1)); done
  say "ballast: $(cat "$d/ballast.json" 2>/dev/null)"
  for run in cold warm; do
    SGLANG_AUTOPERF=1 SGLANG_AUTOPERF_CACHE_DIR=$d/cache CUDA_VISIBLE_DEVICES=0 python3 -c "from sglang.cli.main import main; main()" \
      generate --model-path "$m" --model-id FLUX.1-dev --prompt "a red car" --width 1024 --height 1024 \
      --num-inference-steps 20 --seed 0 --no-save-output --attention-backend torch_sdpa \
      --perf-dump-path "$d/perf-$run.json" > "$d/$run.log" 2>&1
    say "$run rc=$?: $(grep -c 'out of memory' "$d/$run.log") OOM lines"
    grep -F "[autoperf]" "$d/$run.log" | cut -c1-400 > "$d/autoperf_lines_$run.txt"
    grep -E "compressed|calibration of|cache hit|applied" "$d/autoperf_lines_$run.txt" | cut -c1-300 | tee -a "$W/summary.txt"
    (cd benchmarks && python3 -c "import json,sys; from compare import parse_perf_dump; p=parse_perf_dump(json.load(open(sys.argv[1]))); print('steps_ms', [round(x,1) for x in p['step_ms']], 'steady', p['steady'])" "$d/perf-$run.json") 2>&1 | tail -1 | tee -a "$W/summary.txt"
  done
  kill $bp 2>/dev/null; wait $bp 2>/dev/null
  tar -czf "$OUT/compress-e2e.tar.gz" -C "$W" . ; cp "$W/summary.txt" "$OUT/"; say "packed"; exit 0
fi
CUDA_VISIBLE_DEVICES=0 python3 benchmarks/compress_sweep.py --model-path "$m" --model-id FLUX.1-dev --points "$POINTS" \
  --out "$W/sweep" --repeat "${REPEAT:-3}" --time-budget $(( BUDGET_S - ($(date +%s) - T0) - 30 )) > "$W/run.log" 2>&1
say "sweep rc=$?"
grep '^\[compress\]' "$W/run.log" >> "$W/summary.txt"; tail -30 "$W/run.log" | grep -iE "error|Traceback" | head -5 >> "$W/summary.txt"
tail -8 "$W/sweep/worker.log" >> "$W/summary.txt" 2>/dev/null
rm -rf "$W/sweep/traces"
tar -czf "$OUT/compress.tar.gz" -C "$W" . ; cp "$W/summary.txt" "$OUT/"
say "packed"
