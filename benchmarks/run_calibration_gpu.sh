#!/usr/bin/env bash
# One GPU call: the probes against the live card, then the plugin's live calibration on a
# Wan2.1-1.3B-shaped random checkpoint with layerwise offload pinned on by the user:
#   A  off-resident   sglang, no plugin, --dit-layerwise-offload false
#   B  off-forced     sglang, no plugin, --dit-layerwise-offload true (prefetch: sglang's default 1)
#   C  on-cold        plugin on, offload pinned on, empty tuning cache: calibrates on a warmup copy
#   D  on-warm        same again: must hit the cache (no calibration)
#   E  on-traced      as D, with every step traced (traces for fixtures)
#   O  on-overhead    as D, 16 steps, traced and untraced steps alternating (monitor overhead,
#                     paired inside each request: benchmarks/monitor_overhead.py)
#   A2 off-resident   A again, last: brackets the others against drifts of the card's speed
#   F/G 81 frames     off-forced vs plugin (4 steps), cold cache for that shape
#   M0/M1/M2          2 GPUs (sglang's default multi-GPU layout): off-forced, on-cold, on-warm
#   P1/P2             issue 14: prefetch 2 and 1 resident layer pinned by the user; cold cache, then
#                     a second start on that cache; every step traced (the placement it ran)
#   L                 issue 14: --dit-layerwise-residency-lifetime permanent (cannot change live)
#   K0/K              no flag pinned (DiT resident): sglang alone / plugin, which turns torch.compile on
#                     for a served Wan and checks it: request 0 compiled, request 1 eager, then the faster
# Each arm: REQS requests (default 3) in one process (gen_api.py), same prompt and seed -> SHA-256.
#
#   source .gpu-kit/setup_on_gpu.sh; ARMS="A C O A2" bash benchmarks/run_calibration_gpu.sh
# Env: OUT (results), R (work folder, default /tmp/calib), ARMS, SKIP_PROBES=1, BUDGET_S (seconds
# for the whole script; an arm that would not finish in what is left is skipped and said so),
# ARM_EST_S (a single-GPU arm's expected seconds, default 75), CUDA_VISIBLE_DEVICES as usual,
# MASTER_PORT (sglang's worker rendezvous port; distinct for processes started side by side).
# Writes $OUT/calibration.tar.gz, $OUT/summary.json, $OUT/arms.jsonl, $OUT/autoperf_lines.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}
R=${R:-/tmp/calib}
PY=${PY:-python3}
ARMS=${ARMS:-A B C D E G}
REQS=${REQS:-3}
BUDGET_S=${BUDGET_S:-560}
ARM_EST_S=${ARM_EST_S:-75}
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
SA_FREE='{"attention_backend": "torch_sdpa"}'
# issue 14: the user pins prefetch 2 and 1 resident layer (policy left free); and a placement sglang
# cannot change live (permanent residency)
SA_PIN='{"attention_backend": "torch_sdpa", "dit_layerwise_offload": true, "dit_offload_prefetch_size": 2, "dit_layerwise_resident_layers": 1}'
SA_PERM='{"attention_backend": "torch_sdpa", "dit_layerwise_offload": true, "dit_layerwise_resident_layers": 10, "dit_layerwise_residency_lifetime": "permanent"}'
SA_2GPU='{"attention_backend": "torch_sdpa", "dit_layerwise_offload": true, "num_gpus": 2}'
arm() {  # name, autoperf(0/1), server-args, frames, steps, requests, [extra env]
  local name=$1 ap=$2 sargs=$3 frames=$4 steps=$5 reqs=$6; shift 6
  local est=$ARM_EST_S; case $name in M*) est=$(( ARM_EST_S * 3 / 2 )) ;; *81f*) est=$(( ARM_EST_S + 30 )) ;; K-*) est=$(( ARM_EST_S + 180 )) ;; esac
  local left=$(( BUDGET_S - ($(date +%s) - T0) ))
  if [ "$left" -lt "$est" ]; then
    say "arm $name skipped: ${left}s left, it needs ~${est}s"; echo "== $name skipped (${left}s left)" >> "$OUT/autoperf_lines.txt"; return 0
  fi
  mkdir -p "$R/$name"
  say "arm $name (autoperf=$ap, ${frames}f, $steps steps, $reqs requests)"
  if [ "$ap" = 1 ]; then export SGLANG_AUTOPERF=1; else unset SGLANG_AUTOPERF; fi
  env "$@" timeout $(( left - 5 )) $PY benchmarks/gen_api.py --model-path "$M" --out "$R/$name/run.json" \
    --frames "$frames" --steps "$steps" --requests "$reqs" --server-args "$sargs" ${MASTER_PORT:+--master-port $MASTER_PORT} > "$R/$name/log.txt" 2>&1
  echo "  rc=$?"; grep -E '^\{' "$R/$name/log.txt" | tail -3
  # results leave the machine as each arm ends, in case a later arm runs past the call's limit
  [ -f "$R/$name/run.json" ] && { $PY -c "import json,sys; print(json.dumps({'arm': sys.argv[1], **json.load(open(sys.argv[2]))}))" "$name" "$R/$name/run.json" >> "$OUT/arms.jsonl"; }
  { echo "== $name"; grep -a "\[autoperf" "$R/$name/log.txt" | cut -c1-400; } >> "$OUT/autoperf_lines.txt"
  grep -aE "\[autoperf\] (calibrat|candidate|tuning cache|set |plan:|overlap)" "$R/$name/log.txt" | cut -c1-260 | head -12
}
for a in $ARMS; do
  case $a in
    A) arm A-off-resident 0 "$SA_OFF" 17 8 "$REQS" ;;
    A2) arm A2-off-resident 0 "$SA_OFF" 17 8 "$REQS" ;;
    B) arm B-off-forced 0 "$SA_ON" 17 8 "$REQS" ;;
    C) arm C-on-cold 1 "$SA_ON" 17 8 "$REQS" ;;
    D) arm D-on-warm 1 "$SA_ON" 17 8 "$REQS" ;;
    E) arm E-on-traced 1 "$SA_ON" 17 8 "$REQS" SGLANG_AUTOPERF_TRACE_DIR=$R/traces-E ;;
    O) arm O-on-overhead 1 "$SA_ON" 17 16 "$REQS" SGLANG_AUTOPERF_TRACE_DIR=$R/traces-O SGLANG_AUTOPERF_TRACE_EVERY=2
       [ -f "$R/O-on-overhead/run.json" ] && $PY benchmarks/monitor_overhead.py "$R/O-on-overhead/run.json" "$R/traces-O" \
         > "$R/monitor_overhead.json" 2>&1; grep -E "median_paired|mean_paired|pairs" "$R/monitor_overhead.json" ;;
    F) arm F-off-forced-81f 0 "$SA_ON" 81 4 1 ;;
    G) arm G-on-cold-81f 1 "$SA_ON" 81 4 1 ;;
    M0) arm M0-2gpu-off-forced 0 "$SA_2GPU" 17 8 2 ;;
    M1) arm M1-2gpu-on-cold 1 "$SA_2GPU" 17 8 2 SGLANG_AUTOPERF_CACHE_DIR=$R/cache-2gpu ;;
    M2) arm M2-2gpu-on-warm 1 "$SA_2GPU" 17 8 1 SGLANG_AUTOPERF_CACHE_DIR=$R/cache-2gpu ;;
    P1) arm P1-pinned-cold 1 "$SA_PIN" 17 8 "$REQS" SGLANG_AUTOPERF_CACHE_DIR=$R/cache-pin SGLANG_AUTOPERF_TRACE_DIR=$R/traces-P1
        $PY benchmarks/placements_in_traces.py "$R/traces-P1" | tee "$OUT/placements_P1.json" ;;
    P2) arm P2-pinned-warm 1 "$SA_PIN" 17 8 "$REQS" SGLANG_AUTOPERF_CACHE_DIR=$R/cache-pin SGLANG_AUTOPERF_TRACE_DIR=$R/traces-P2
        $PY benchmarks/placements_in_traces.py "$R/traces-P2" | tee "$OUT/placements_P2.json" ;;
    L) arm L-permanent 1 "$SA_PERM" 17 8 "$REQS" ;;
    K0) arm K0-off-unpinned 0 "$SA_FREE" 17 8 "$REQS" ;;
    K) arm K-on-compile-check 1 "$SA_FREE" 17 8 "$REQS" SGLANG_AUTOPERF_CACHE_DIR=$R/cache-compile SGLANG_AUTOPERF_COMPILE=1 ;;
    *) say "unknown arm $a" ;;
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
cp "$R/monitor_overhead.json" "$OUT/monitor_overhead.json" 2>/dev/null
t=$(ls "$R"/traces-E/*req1*.json 2>/dev/null | head -1); [ -n "$t" ] && cp "$t" "$OUT/trace_E_request.json"
tar czf "$OUT/calibration.tar.gz" -C "$(dirname "$R")" "$(basename "$R")"
say "done"
