#!/usr/bin/env bash
# One GPU call: the probes against the live card, then the plugin's live calibration on a
# Wan2.1-1.3B-shaped random checkpoint with layerwise offload pinned on by the user:
#   A off-resident   sglang, no plugin, --dit-layerwise-offload false
#   B off-forced     sglang, no plugin, --dit-layerwise-offload true (prefetch: sglang's default 1)
#   C on-cold        plugin on, offload pinned on, empty tuning cache: calibrates on a warmup copy
#   D on-warm        same again: must hit the cache (no calibration)
#   E on-traced      as D, with every step traced (monitor overhead = E vs D; traces for fixtures)
#   F/G 81 frames    off-forced vs plugin (4 steps), cold cache for that shape
# Each arm: 2 requests in one process (gen_api.py), same prompt and seed -> SHA-256 of the output.
#
#   source .gpu-kit/setup_on_gpu.sh; bash benchmarks/run_calibration_gpu.sh   (from the repo root)
# Writes $OUT/calibration.tar.gz and $OUT/summary.json.
set -uo pipefail
OUT=${OUT:-/tmp/out}
R=/tmp/calib
PY=${PY:-python3}
ARMS=${ARMS:-A B C D E G}
rm -rf "$R"; mkdir -p "$R" "$OUT"
export PYTHONUNBUFFERED=1 SGLANG_AUTOPERF_CACHE_DIR=$R/cache
T0=$(date +%s)
say() { echo "[calib $(( $(date +%s) - T0 ))s] $*"; }

if [ -z "${SKIP_PROBES:-}" ]; then
say "probes"
nvidia-smi > "$R/nvidia-smi.txt" 2>&1
$PY -m sglang_autoperf.probe.nvml_snapshot > "$R/nvml_snapshot.json" 2> "$R/nvml_snapshot.err"
$PY -m sglang_autoperf.cli probe --json > "$R/probe.json" 2>&1
$PY -m sglang_autoperf.cli probe > "$R/probe.txt" 2>&1; cat "$R/probe.txt"
$PY tests/gpu/test_probe_live.py > "$R/probe_live.log" 2>&1; tail -8 "$R/probe_live.log"
cp "$R/nvml_snapshot.json" "$OUT/nvml_snapshot.json" 2>/dev/null
fi

say "checkpoint"
M=$($PY benchmarks/make_checkpoints.py wan2.1-t2v-1.3b --print-path | tail -1)
[ -f "$M/_source.json" ] || $PY benchmarks/make_checkpoints.py wan2.1-t2v-1.3b > "$R/build.log" 2>&1
$PY -m sglang_autoperf.cli probe --model-path "$M" > "$R/probe_model.txt" 2>&1

SA_OFF='{"attention_backend": "torch_sdpa", "dit_layerwise_offload": false}'
SA_ON='{"attention_backend": "torch_sdpa", "dit_layerwise_offload": true}'
arm() {  # name, autoperf(0/1), server-args, frames, steps, requests, [extra env]
  local name=$1 ap=$2 sargs=$3 frames=$4 steps=$5 reqs=$6; shift 6
  mkdir -p "$R/$name"
  say "arm $name (autoperf=$ap, ${frames}f, $steps steps, $reqs requests)"
  if [ "$ap" = 1 ]; then export SGLANG_AUTOPERF=1; else unset SGLANG_AUTOPERF; fi
  env "$@" timeout 240 $PY benchmarks/gen_api.py --model-path "$M" --out "$R/$name/run.json" \
    --frames "$frames" --steps "$steps" --requests "$reqs" --server-args "$sargs" > "$R/$name/log.txt" 2>&1
  echo "  rc=$?"; grep -E '^\{' "$R/$name/log.txt" | tail -3
  # results leave the machine as each arm ends, in case a later arm runs past the call's limit
  [ -f "$R/$name/run.json" ] && { $PY -c "import json,sys; print(json.dumps({'arm': sys.argv[1], **json.load(open(sys.argv[2]))}))" "$name" "$R/$name/run.json" >> "$OUT/arms.jsonl"; }
  { echo "== $name"; grep -a "\[autoperf" "$R/$name/log.txt" | cut -c1-400; } >> "$OUT/autoperf_lines.txt"
  grep -aE "\[autoperf\] (calibrat|candidate|tuning cache|set |plan:|overlap)" "$R/$name/log.txt" | cut -c1-260 | head -12
}
for a in $ARMS; do
  case $a in
    A) arm A-off-resident 0 "$SA_OFF" 17 8 2 ;;
    B) arm B-off-forced 0 "$SA_ON" 17 8 2 ;;
    C) arm C-on-cold 1 "$SA_ON" 17 8 2 ;;
    D) arm D-on-warm 1 "$SA_ON" 17 8 2 ;;
    E) arm E-on-traced 1 "$SA_ON" 17 8 2 SGLANG_AUTOPERF_TRACE_DIR=$R/traces-E ;;
    F) arm F-off-forced-81f 0 "$SA_ON" 81 4 1 ;;
    G) arm G-on-cold-81f 1 "$SA_ON" 81 4 1 ;;
  esac
done

say "summary"
$PY - "$R" > "$OUT/summary.json" <<'PY'
import glob, json, os, sys
R = sys.argv[1]
out = {"arms": {}}
for run in sorted(glob.glob(f"{R}/*/run.json")):
    d = json.load(open(run))
    out["card"] = d.get("card"); out["sglang"] = d.get("sglang"); out["torch"] = d.get("torch")
    out["arms"][os.path.basename(os.path.dirname(run))] = {
        "requests": [{k: r.get(k) for k in ("status", "steps_ms", "steady_median_ms", "steady_min_ms",
                                            "steady_max_ms", "peak_memory_mb", "sha256", "denoise_ms")}
                     for r in d["requests"]],
        "error": d.get("error"), "startup_s": d.get("startup_s"), "process_s": d.get("process_s")}
print(json.dumps(out, indent=1))
PY
cat "$OUT/summary.json" | $PY -c "
import json,sys; d=json.load(sys.stdin); print(d.get('card'))
for k,v in d['arms'].items():
    for i,r in enumerate(v['requests']): print(f\"{k:22s} req{i} median {r.get('steady_median_ms')} peakMB {r.get('peak_memory_mb')} sha {str(r.get('sha256'))[:12]}\")
    if v.get('error'): print(k, 'ERROR', v['error'][:200])"
cp "$R/nvml_snapshot.json" "$OUT/nvml_snapshot.json" 2>/dev/null
t=$(ls "$R"/traces-E/*req1*.json 2>/dev/null | head -1); [ -n "$t" ] && cp "$t" "$OUT/trace_E_request.json"
tar czf "$OUT/calibration.tar.gz" -C /tmp calib
say "done"
