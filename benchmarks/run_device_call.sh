#!/usr/bin/env bash
# One whole GPU call (<= 10 minutes) made of the project's experiments, on 1 or 2 GPUs.
# On a 2-GPU machine, two single-GPU experiments run side by side, one per GPU (arms of one
# experiment always run one after another on the same GPU, so their ratios stay comparable; the
# other GPU's experiment shares the host: CPU, RAM bandwidth. Results say so). Each lane gets its
# own --master-port: sglang checks its default port (30005) is free when it parses its arguments,
# so two processes starting at the same moment both take it and one worker dies with EADDRINUSE
# (seen on 2026-11-27, which cost the first run of this script two arms).
#
#   source .gpu-kit/setup_on_gpu.sh; bash benchmarks/run_device_call.sh PLAN     (repo root)
#
# PLAN:
#   probes+calib+flux   probes of every visible GPU; GPU0: calibration arms A C O A2 B (issue 5);
#                       GPU1: benchmark case flux-1024-24g (issue 6)
#   wan14b+wan13b       GPU0: case wan14b-81f-24g; GPU1: case wan13b-17f
#   2gpu                probes, then 2-GPU arms M0 M1 M2 (rank agreement)
#   overhead+wan13b     GPU0: calibration arms A C O A2 (plugin vs resident, monitor overhead);
#                       GPU1: case wan13b-17f (off / forced offload / plugin / sweep)
#   wan14b+wan13b81     GPU0: case wan14b-81f-24g (with its sweep point); GPU1: case wan13b-81f
#   overhead+compile+wan13b  GPU0: arms O (monitor overhead) K0 K (torch.compile check);
#                       GPU1: case wan13b-17f
#   quiet               one GPU, nothing beside it: probes; arm O (monitor overhead), then case
#                       wan13b-17f-short (a compile or a copy-heavy run on the other GPU of a 2-GPU
#                       host moved 1.3B step times by 20-70% on 2026-11-27, call 1 of session 3)
#   overhead            one GPU: arm O (monitor overhead, REQS=4), then wan13b-17f-short while time is left
#   oracle              one GPU: case wan13b-17f-oracle (on-forced vs two sweep points)
#   paired              one GPU: case wan13b-17f-paired (off, plugin, sglang at the plugin's start point; twice)
#   check               one GPU: case wan13b-17f-check (off, plugin cold, off; ~4 min)
#   overhead+paired     one GPU: arm O (REQS=6), then case wan13b-17f-paired
#   validate            one GPU: arm C only (calibration from a cold cache, 2 requests): a quick check
#   compile             probes; GPU0: arms K0 K (the torch.compile check on a resident Wan-1.3B, 3 requests)
#   cost+overhead+check one GPU: the monitor's host cost part by part (monitor_cost.py, seconds), arm O
#                       (REQS=4), then case wan13b-17f-check
#   overhead+check      one GPU: arm O (REQS=6), then case wan13b-17f-check
#   overhead-only       one GPU: arm O (REQS=6), nothing else (~4 minutes)
#   cost+overhead-only  one GPU: monitor_cost.py (seconds), then arm O (REQS=6)
#   trust               one GPU: probes (GPU-marked tests included), then arms P1 P2 L (issue 14: pinned
#                       placement flags through calibration and a cache-hit start; permanent lifetime)
#   tax                 one GPU: case wan13b-17f-tax (sglang's own per-layer hook cost vs offload off)
#   compile-default+check  one GPU: arms K0 K with SGLANG_TORCH_COMPILE_MODE=default (Inductor without
#                       max-autotune: the first compiled request fits a call), then case wan13b-17f-check
#   sweep               one GPU: the FLUX.1-dev-shaped checkpoint, then benchmarks/inprocess_sweep.py at the
#                       16 and 24 GiB limits in one sglang process (issue 17): grid, planner choices, neighbours
#   sweep-focus         one GPU: the same with the points of FOCUS (default: the 2026-11-29 page's
#                       focus_points.json), each twice; then, while time is left, LIMIT_POINTS (limit_points.json)
#                       in a second process beside a ballast that leaves 16 GiB free: which points really fit
#   lists16             one GPU: FLUX.1-dev 1024x1024, the plugin end to end beside a ballast that leaves
#                       FREE_GIB (16) free: a cold start (calibrates per layer list on its warmup) and a warm
#                       one (cache hit); then its cached choice as a point of an in-process sweep with the
#                       2026-11-29 sweep's best, everything resident and the planner's start (issue 17)
#   lists24             the same at 24 GiB free (12 steps a request, 2 blocks a point)
#   families            issue 16: two families the probe reads from sglang's registry, 1024x1024, 8 steps:
#                       Z-Image-Turbo beside a ballast leaving ZIMAGE_FREE_GIB (10), FLUX.2-klein-4B leaving
#                       KLEIN_FREE_GIB (8) (budgets where the planner streams and sglang's own defaults keep
#                       the DiT whole). Each: its random checkpoint, `sglang generate` with the plugin (cold
#                       cache), then one in-process sweep: everything resident, the plugin's cached choice and
#                       its neighbours, the planner's start (the reference), a grid. Then, while time is left,
#                       sglang's defaults (plugin off) and the plugin's warm-cache run of each (on 2026-11-29
#                       only Z-Image's defaults fit in 540 s: a sglang process costs ~30 s before it loads)
#   klein-check         FLUX.2-klein-4B at KLEIN_FREE_GIB (8): the plugin cold and warm (KLEIN_RUNS) beside a ballast; its cached
#                       choice and the best points of limit_points.json in one sweep process beside the ballast;
#                       then Z-Image-Turbo cold and warm (ZIMAGE_FREE_GIB, 10) while 200 s are left
#   klein-compress      FLUX.2-klein-4B at KLEIN_FREE_GIB (8): the plugin cold and warm beside a ballast, then its cached
#                       choice and the best raw points, each raw and compressed, in one compress_sweep process beside the ballast
#   zimage-compress     the same for Z-Image-Turbo at ZIMAGE_FREE_GIB (10): its cached choice and 10-14 resident
#   klein-limit         FLUX.2-klein-4B: LIMIT_POINTS (the Klein page's limit_points.json), each twice, in one sweep
#                       process beside a ballast leaving KLEIN_FREE_GIB (8): which points really fit, and their speed
#   klein               FLUX.2-klein-4B alone, every arm of the families plan: cold, its sweep, sglang's
#                       defaults and the warm run (the families plan's Klein ran out of time after the sweep)
# Env: BUDGET_S (seconds for the whole call, default 570); PIN_CPUS (see below).
# Writes under $OUT: one .tar.gz per part, summary.txt (the parts' tables and key lines).
set -uo pipefail
PLAN=${1:?usage: run_device_call.sh PLAN}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-/tmp/out}
BUDGET_S=${BUDGET_S:-570}
T0=$(date +%s)
W=/tmp/devcall; rm -rf "$W"; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET_S - ($(date +%s) - T0) - 20 )); }  # 20 s to pack results
say() { echo "[device-call $(( $(date +%s) - T0 ))s] $*"; }
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
say "plan $PLAN on $NGPU GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"

checkpoint() {  # KEY LOG: prints the random checkpoint's folder, building it once per machine (output to LOG)
  local m; m=$(python3 benchmarks/make_checkpoints.py "$1" --root /tmp/models --print-path | tail -1)
  [ -f "$m/_source.json" ] || python3 benchmarks/make_checkpoints.py "$1" --root /tmp/models > "$2" 2>&1
  echo "$m"
}

inprocess_sweep() {  # [name [flags]]: FLUX.1-dev 1024x1024, one process, many per-list placements (issue 17)
  local d=$W/${1:-sweep}; shift; mkdir -p "$d"
  local m; m=$(checkpoint flux.1-dev "$d/build.log")
  say "checkpoint: $(tail -1 "$d/build.log" 2>/dev/null)"
  CUDA_VISIBLE_DEVICES=0 $PIN python3 benchmarks/inprocess_sweep.py --model-path "$m" --model-id FLUX.1-dev \
    --budgets 16GiB,24GiB --out "$d" --time-budget "$(left)" "$@" > "$d/run.log" 2>&1
  say "sweep $(basename "$d") rc=$?: $(grep -c . "$d/points.jsonl" 2>/dev/null) blocks"
  { echo "## $(basename "$d")"; grep '^\[sweep\]' "$d/run.log"; tail -5 "$d/worker.log" 2>/dev/null; } >> "$W/summary.txt"
}

flux_checkpoint() {  # prints the FLUX.1-dev-shaped checkpoint's folder, building it once per machine
  checkpoint flux.1-dev "$W/build.log"
}

ballast_up() {  # DIR FREE_GIB: a ballast leaving FREE_GIB free and a sampler of the card's used memory; sets BALLAST
  rm -f "$1/ballast.json"  # a second ballast in the same folder: wait for its own ready file
  python3 benchmarks/ballast.py --free-gib "$2" --ready-file "$1/ballast.json" --parent-pid $$ >> "$1/ballast.log" 2>&1 &
  local bp=$! t=0
  while [ ! -s "$1/ballast.json" ] && [ $t -lt 120 ]; do sleep 1; t=$((t + 1)); done
  say "ballast: $(cat "$1/ballast.json" 2>/dev/null)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >> "$1/memory_used_mib.txt" 2>/dev/null &
  BALLAST="$! $bp"
}

ballast_down() {  # the sampler and the ballast of ballast_up
  kill $BALLAST 2>/dev/null; wait ${BALLAST##* } 2>/dev/null
}

generate_arm() {  # DIR NAME RUN MODEL STEPS [sglang flags]: one `sglang generate`, 1024x1024. RUN cold/warm:
  # the plugin on with DIR/cache (empty: calibrates; filled: cache hit); defaults: the plugin off, sglang's own settings
  local d=$1 name=$2 run=$3 m=$4 steps=$5 on=1; shift 5
  [ "$run" = defaults ] && on=0
  SGLANG_AUTOPERF=$on SGLANG_AUTOPERF_CACHE_DIR=$d/cache SGLANG_AUTOPERF_TRACE_DIR=$d/traces-$run \
    SGLANG_AUTOPERF_TRACE_EVERY=5 CUDA_VISIBLE_DEVICES=0 $PIN ${ARM_TIMEOUT:+timeout -k 10 $ARM_TIMEOUT} \
    python3 -c "from sglang.cli.main import main; main()" \
    generate --model-path "$m" "$@" --prompt "a red car" --width 1024 --height 1024 \
    --num-inference-steps "$steps" --seed 0 --no-save-output --attention-backend torch_sdpa \
    --perf-dump-path "$d/perf-$run.json" > "$d/$run.log" 2>&1
  say "$name $run rc=$?: $(grep -c 'out of memory' "$d/$run.log") OOM lines; $(grep -E 'calibration of|cache hit|switched|candidate' "$d/$run.log" | cut -c1-220 | head -6 | tr '\n' '|')"
  grep -F "[autoperf]" "$d/$run.log" > "$d/autoperf_lines_$run.txt"
}

plugin_e2e() {  # NAME FREE_GIB STEPS: `sglang generate` with the plugin beside a ballast, cold then warm cache
  local d=$W/$1 m; mkdir -p "$d"; m=$(flux_checkpoint)
  ballast_up "$d" "$2"
  for run in cold warm; do
    generate_arm "$d" "$1" "$run" "$m" "$3" --model-id FLUX.1-dev
  done
  ballast_down
  python3 - "$d" <<'PY' > "$d/focus.json"
import glob, json, sys
d = sys.argv[1]
points = []
for path in glob.glob(f"{d}/cache/*.json"):
    result = json.load(open(path))["result"]
    if result.get("list_placement"):
        points.append({"label": "plugin's choice (cache)", "lists": dict(result["list_placement"]), "trace": True})
both = lambda d_, s_, pd, ps: {"transformer.transformer_blocks": {"resident_layers": d_, "prefetch_layers": pd, "policy": "strided"},
                               "transformer.single_transformer_blocks": {"resident_layers": s_, "prefetch_layers": ps, "policy": "strided"}}
points += [{"label": "sweep best d15/s2 p2/2", "lists": both(15, 2, 2, 2)},
           {"label": "all resident", "lists": both(19, 38, 2, 2)}]
print(json.dumps(points, indent=1))
PY
  say "focus points: $(python3 -c "import json,sys; print([p['label'] for p in json.load(open(sys.argv[1]))])" "$d/focus.json")"
}

compress_beside() {  # NAME E2E_DIR FREE_GIB REPEAT: E2E_DIR/points.json raw and compressed in one process beside a ballast
  local s=$W/$1; mkdir -p "$s"
  CUDA_VISIBLE_DEVICES=0 $PIN timeout -k 10 "$(( $(left) - 10 ))" python3 benchmarks/compress_sweep.py --model-path "$(cat "$2/model")" \
    --points "$2/points.json" --free-gib "$3" --out "$s" --steps-per-request 8 --repeat "$4" \
    --time-budget "$(( $(left) - 30 ))" > "$s/run.log" 2>&1
  say "$1 rc=$?: $(grep -c . "$s/points.jsonl" 2>/dev/null) blocks"; grep "^\[compress\]" "$s/run.log" | tail -14
}

family_e2e() {  # NAME KEY FREE_GIB STEPS RUN...: `sglang generate` beside a ballast leaving FREE_GIB, 1024x1024
  # (issue 16), for each RUN that its time needs allow (cold 1st, defaults, warm: see generate_arm); the
  # first call builds the checkpoint and, on the CPU while the card runs the arms, the planner's start at
  # this budget with the card as it is before the ballast (for family_sweep)
  local name=$1 key=$2 free=$3 steps=$4 d=$W/$1-e2e m run; shift 4
  mkdir -p "$d"; m=$(checkpoint "$key" "$d/build.log")
  if [ ! -s "$d/model" ]; then
    echo "$m" > "$d/model"
    say "$name checkpoint: $(grep -F 'done:' "$d/build.log" 2>/dev/null | cut -c1-160)"
    python3 -m sglang_autoperf.probe.nvml_snapshot > "$d/gpu.json" 2> "$d/gpu.err"
    python3 -m sglang_autoperf.cli plan --model-path "$m" --gpu-snapshot "$d/gpu.json" --vram-budget "${free}GiB" \
      --steps "$steps" --json > "$d/plan.out" 2> "$d/plan.err" &
    PLAN_PID=$!
  fi
  ballast_up "$d" "$free"
  for run in "$@"; do
    if [ "$run" = cold ] || [ "$(left)" -gt "${NEED_S[$run]}" ]; then
      ARM_TIMEOUT=${NEED_S[$run]} generate_arm "$d" "$name" "$run" "$m" "$steps"
    else say "$name $run: skipped, $(left) s left"; fi
  done
  ballast_down
}
declare -A NEED_S=([cold]=200 [defaults]=75 [warm]=130)  # seconds an arm may take (a process starts in ~30 s;
# Z-Image-Turbo's warm start, loading 12.7 GB and encoding the compressed store, passed 85 s on 2026-11-29)

family_sweep() {  # NAME FREE_GIB STEPS GRID SECONDS: one in-process sweep (no ballast) of the family's
  # checkpoint: everything resident, the plugin's cached choice and neighbours, the planner's start, a grid
  local name=$1 free=$2 steps=$3 d=$W/$1-e2e s=$W/$1-sweep m plans=()
  mkdir -p "$s"; m=$(cat "$d/model")
  wait "$PLAN_PID"  # the planner's start (family_e2e)
  python3 - "$d/plan.out" "${free}GiB" > "$d/plans.json" <<'PY' && plans=(--plans "$d/plans.json")
import json, sys
text = open(sys.argv[1]).read()
print(json.dumps({sys.argv[2]: json.loads(text[text.find("{"):])}))
PY
  CUDA_VISIBLE_DEVICES=0 $PIN timeout -k 10 $(( $5 + 20 )) python3 benchmarks/inprocess_sweep.py --model-path "$m" \
    --budgets "${free}GiB" "${plans[@]}" --plugin-cache "$d/cache" --out "$s" --steps-per-request "$steps" \
    --plan-steps "$steps" --grid "$4" --finish-s 15 --time-budget "$5" > "$s/run.log" 2>&1
  say "$name sweep rc=$?: $(grep -c . "$s/points.jsonl" 2>/dev/null) blocks"
  { echo "## $name"; grep '^\[sweep\]' "$s/run.log"; tail -5 "$s/worker.log" 2>/dev/null; } >> "$W/summary.txt"
}

min() { echo $(( $1 < $2 ? $1 : $2 )); }

probes() {  # every visible GPU: NVML snapshot, CLI probe (table + JSON), live checks vs nvidia-smi
  local d=$W/probes; mkdir -p "$d"
  nvidia-smi > "$d/nvidia-smi.txt" 2>&1
  nvidia-smi topo -m > "$d/nvidia-smi-topo.txt" 2>&1
  python3 -m sglang_autoperf.probe.nvml_snapshot > "$d/nvml_snapshot.json" 2> "$d/nvml_snapshot.err"
  python3 -m sglang_autoperf.cli probe --json > "$d/probe.json" 2>&1
  python3 -m sglang_autoperf.cli probe > "$d/probe.txt" 2>&1
  python3 -m pytest -q -p no:cacheprovider tests/gpu -rA > "$d/pytest_gpu.log" 2>&1
  { echo "## probes"; cat "$d/probe.txt"; tail -5 "$d/pytest_gpu.log"; } >> "$W/summary.txt"
  say "probes done: $(tail -1 "$d/pytest_gpu.log")"
}

calib() {  # GPUs (CUDA_VISIBLE_DEVICES), name, arms
  local gpus=$1 d=$W/$2 arms=$3
  mkdir -p "$d"
  CUDA_VISIBLE_DEVICES=$gpus OUT=$d R=/tmp/$2 ARMS="$arms" SKIP_PROBES=1 BUDGET_S=$(left) REQS=${REQS:-3} \
    MASTER_PORT=$(( 31000 + ${gpus%%,*} * 500 )) \
    $PIN bash "$HERE/run_calibration_gpu.sh" > "$d/run.log" 2>&1
}

cost() {  # the monitor's host cost, part by part, without sglang
  local d=$W/monitor-cost; mkdir -p "$d"
  CUDA_VISIBLE_DEVICES=0 $PIN python3 benchmarks/monitor_cost.py > "$d/monitor_cost.json" 2> "$d/run.log"
  say "monitor cost: $(tr -d '\n' < "$d/monitor_cost.json" | cut -c1-600)"
}

case_run() {  # GPU, case
  local gpu=$1 case=$2 d=$W/$2
  mkdir -p "$d"
  CUDA_VISIBLE_DEVICES=$gpu OUT=$d MODELS=/tmp/models-gpu$gpu BUDGET_S=$(left) \
    EXTRA="--master-port $(( 33000 + gpu * 500 ))" \
    $PIN bash "$HERE/run_gpu.sh" "$case" > "$d/run.log" 2>&1
}

# The machine beside the experiment, every 2 s (to tell a GPU clock or power change from a host
# one when the same arm gives different step times in one call): GPU SM clock, power, temperature,
# utilisation, and the host's load average.
machine_log() {
  while true; do
    printf '%s,%s,%s\n' "$(date +%s)" \
      "$(nvidia-smi --query-gpu=index,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,clocks_throttle_reasons.active --format=csv,noheader,nounits 2>/dev/null | tr '\n' ';')" \
      "$(cut -d' ' -f1-3 /proc/loadavg)"
    sleep 2
  done > "$W/machine.csv" 2>/dev/null
}
machine_log & MACHINE_LOG_PID=$!
trap 'kill $MACHINE_LOG_PID 2>/dev/null' EXIT

# PIN_CPUS (e.g. 0-7): run every experiment under `taskset -c PIN_CPUS`, so each sglang process of
# the call runs on the same cores (the same arm gave 172 and 242 ms/step in two processes of one
# call on 2026-11-27: host-bound steps on whichever cores a process lands on).
PIN=${PIN_CPUS:+taskset -c $PIN_CPUS}

# The second lane's GPU: GPU 1 where there is one, else GPU 0 after the first lane.
G1=$(( NGPU >= 2 ? 1 : 0 ))
side_by_side() {  # "first lane" "second lane": in parallel on 2 GPUs, else one after the other
  if [ "$NGPU" -ge 2 ]; then
    eval "$1" & local a=$!; eval "$2" & local b=$!; wait $a $b
  else
    eval "$1"; eval "$2"
  fi
}

case $PLAN in
  probes+calib+flux) probes; side_by_side 'calib 0 calib-1gpu "A C O A2 B"' 'case_run $G1 flux-1024-24g' ;;
  wan14b+wan13b) side_by_side 'case_run 0 wan14b-81f-24g' 'case_run $G1 wan13b-17f' ;;
  2gpu) probes; calib 0,1 calib-2gpu "M0 M1 M2" ;;
  overhead+wan13b) side_by_side 'calib 0 calib-1gpu "A C O A2"' 'case_run $G1 wan13b-17f' ;;
  overhead+compile+wan13b) side_by_side 'calib 0 calib-1gpu "O K0 K"' 'case_run $G1 wan13b-17f' ;;
  quiet) probes; calib 0 calib-1gpu "O"; case_run 0 wan13b-17f-short ;;
  overhead) REQS=4 calib 0 calib-1gpu "O"; case_run 0 wan13b-17f-short ;;
  oracle) case_run 0 wan13b-17f-oracle ;;
  paired) case_run 0 wan13b-17f-paired ;;
  check) case_run 0 wan13b-17f-check ;;
  overhead+paired) REQS=6 calib 0 calib-1gpu "O"; case_run 0 wan13b-17f-paired ;;
  validate) REQS=2 calib 0 calib-1gpu "C" ;;
  compile) probes; calib 0 calib-compile "K0 K" ;;
  overhead-only) REQS=6 calib 0 calib-1gpu "O" ;;
  cost+overhead-only) cost; REQS=6 calib 0 calib-1gpu "O" ;;
  tax) case_run 0 wan13b-17f-tax ;;
  trust) probes; REQS=2 calib 0 calib-trust "P1 P2 L" ;;
  overhead+check) REQS=6 calib 0 calib-1gpu "O"; case_run 0 wan13b-17f-check ;;
  cost+overhead+check) cost; REQS=4 calib 0 calib-1gpu "O"; case_run 0 wan13b-17f-check ;;
  compile-default+check) SGLANG_TORCH_COMPILE_MODE=default calib 0 calib-compile "K0 K"; case_run 0 wan13b-17f-check ;;
  sweep) inprocess_sweep sweep ;;
  sweep-focus) R17=benchmarks/results/2026-11-29-h200-sweep
    inprocess_sweep sweep-focus --focus "${FOCUS:-$R17/focus_points.json}" --repeat 2
    [ "$(left)" -gt 110 ] && inprocess_sweep sweep-limit16 --focus "${LIMIT_POINTS:-$R17/limit_points.json}" --repeat 1 \
      --reference-every 100 --free-gib 16 ;;
  lists16) plugin_e2e lists16-e2e "${FREE_GIB:-16}" 20
    inprocess_sweep lists16-sweep --budgets 16GiB --focus "$W/lists16-e2e/focus.json" --repeat 3 ;;
  lists24) plugin_e2e lists24-e2e 24 12
    inprocess_sweep lists24-sweep --budgets 24GiB --focus "$W/lists24-e2e/focus.json" --repeat 2 ;;
  families) ZF=${ZIMAGE_FREE_GIB:-10}; KF=${KLEIN_FREE_GIB:-8}  # what matters first runs first
    family_e2e zimage z-image-turbo "$ZF" 8 cold
    family_sweep zimage "$ZF" 8 7 "$(min 100 $(( $(left) - 230 )))"
    family_e2e klein flux.2-klein-4b "$KF" 8 cold
    family_sweep klein "$KF" 8 3 "$(min 100 $(( $(left) - 60 )))"
    family_e2e zimage z-image-turbo "$ZF" 8 defaults warm
    family_e2e klein flux.2-klein-4b "$KF" 8 defaults warm ;;
  klein) KF=${KLEIN_FREE_GIB:-8}  # the families plan's FLUX.2-klein arms again, all of them
    family_e2e klein flux.2-klein-4b "$KF" 8 cold
    family_sweep klein "$KF" 8 3 "$(min 100 $(( $(left) - 190 )))"
    family_e2e klein flux.2-klein-4b "$KF" 8 defaults warm ;;
  klein-limit) KF=${KLEIN_FREE_GIB:-8}; d=$W/klein-limit; mkdir -p "$d"  # which Klein points really fit beside a ballast
    m=$(checkpoint flux.2-klein-4b "$d/build.log")
    CUDA_VISIBLE_DEVICES=0 $PIN timeout -k 10 "$(( $(left) - 10 ))" python3 benchmarks/inprocess_sweep.py --model-path "$m" \
      --budgets "${KF}GiB" --focus "${LIMIT_POINTS:-benchmarks/results/2026-11-29-h200-klein/limit_points.json}" \
      --repeat 2 --reference-every 4 --free-gib "$KF" --out "$d" --steps-per-request 8 --plan-steps 8 --finish-s 15 \
      --time-budget "$(( $(left) - 30 ))" > "$d/run.log" 2>&1
    say "klein-limit rc=$?: $(grep -c . "$d/points.jsonl" 2>/dev/null) blocks" ;;
  klein-check) KF=${KLEIN_FREE_GIB:-8}; d=$W/klein-e2e  # the plugin cold and warm, then its choice beside the best points
    family_e2e klein flux.2-klein-4b "$KF" 8 ${KLEIN_RUNS:-cold warm}
    python3 - "$d" benchmarks/results/2026-11-29-h200-klein/limit_points.json > "$d/focus.json" <<'PY'
import glob, json, sys
points = [{"label": "plugin's choice (cache)", "lists": json.load(open(p))["result"]["list_placement"]}
          for p in glob.glob(f"{sys.argv[1]}/cache/*.json")]
points = [dict(p, lists=dict(p["lists"])) for p in points if p["lists"]]
best = ("d5/s3 p1/6", "d5/s3 p1/4", "d5/s5 p1/2", "d5/s4 p1/2", "d5/s3 p1/3", "d5/s3 p1/2")
print(json.dumps(points + [p for p in json.load(open(sys.argv[2])) if any(b in p["label"] for b in best)], indent=1))
PY
    s=$W/klein-limit; mkdir -p "$s"
    CUDA_VISIBLE_DEVICES=0 $PIN timeout -k 10 "$(( $(left) - 10 ))" python3 benchmarks/inprocess_sweep.py --model-path "$(cat "$d/model")" \
      --budgets "${KF}GiB" --focus "$d/focus.json" --repeat 2 --reference-every 4 --free-gib "$KF" --out "$s" \
      --steps-per-request 8 --plan-steps 8 --finish-s 15 --time-budget "$(min 150 $(( $(left) - 30 )))" > "$s/run.log" 2>&1
    say "klein-limit rc=$?: $(grep -c . "$s/points.jsonl" 2>/dev/null) blocks"
    [ "$(left)" -gt 200 ] && family_e2e zimage z-image-turbo "${ZIMAGE_FREE_GIB:-10}" 8 cold warm
    true ;;
  klein-compress) KF=${KLEIN_FREE_GIB:-8}; d=$W/klein-e2e  # the plugin cold and warm, then compressed vs raw beside the ballast
    family_e2e klein flux.2-klein-4b "$KF" 8 ${KLEIN_RUNS:-cold warm}
    python3 - "$d" > "$d/points.json" <<'PY'
import glob, json, sys
def lists(d, s, pd, ps):
    return {"transformer.transformer_blocks": {"resident_layers": d, "prefetch_layers": pd, "policy": "strided"},
            "transformer.single_transformer_blocks": {"resident_layers": s, "prefetch_layers": ps, "policy": "strided"}}
points = [{"label": "plugin's choice (cache)", "lists": dict(json.load(open(p))["result"]["list_placement"] or {})}
          for p in glob.glob(f"{sys.argv[1]}/cache/*.json")]
points = [p for p in points if p["lists"]]
points += [{"label": "d5/s6 p2/2", "lists": lists(5, 6, 2, 2)}, {"label": "d5/s3 p1/6", "lists": lists(5, 3, 1, 6)},
           {"label": "d5/s5 p1/2", "lists": lists(5, 5, 1, 2)}, {"label": "d4/s4 p2/2", "lists": lists(4, 4, 2, 2)}]
print(json.dumps(points, indent=1))
PY
    compress_beside klein-compress "$d" "$KF" 4
    true ;;
  zimage-compress) ZF=${ZIMAGE_FREE_GIB:-10}; d=$W/zimage-e2e  # the same for Z-Image-Turbo (one layer list)
    family_e2e zimage z-image-turbo "$ZF" 8 ${ZIMAGE_RUNS:-cold warm}
    python3 - "$d" > "$d/points.json" <<'PY'
import glob, json, sys
one = lambda r, p=2: {"transformer.layers": {"resident_layers": r, "prefetch_layers": p, "policy": "strided"}}
cached = [json.load(open(p))["result"] for p in glob.glob(f"{sys.argv[1]}/cache/*.json")]
points = [{"label": "plugin's choice (cache)", "lists": one(r["placement"]["resident_layers"], r["placement"]["prefetch_layers"])}
          for r in cached if r.get("placement")]
points += [{"label": f"{n} resident p2", "lists": one(n)} for n in (10, 11, 12, 13, 14)]  # the likely OOMs last
print(json.dumps(points, indent=1))
PY
    compress_beside zimage-compress "$d" "$ZF" 3
    true ;;
  wan14b+wan13b81) side_by_side 'case_run 0 wan14b-81f-24g' 'case_run $G1 wan13b-81f' ;;
  *) echo "unknown plan $PLAN"; exit 2 ;;
esac

say "packing"
kill $MACHINE_LOG_PID 2>/dev/null; cp "$W/machine.csv" "$OUT/machine.csv" 2>/dev/null
for d in "$W"/*/; do
  name=$(basename "$d")
  { echo "## $name"; cat "$d"/table.md 2>/dev/null
    grep -hE "median_|pairs\"" "$d"/monitor_overhead.json 2>/dev/null
    cat "$d"/monitor_cost.json 2>/dev/null
    grep -hE "==|calibrat|cache hit|plan:|skipped" "$d"/autoperf_lines.txt 2>/dev/null | cut -c1-300 | head -40
    tail -25 "$d"/run.log 2>/dev/null; } >> "$W/summary.txt"
  tar czf "$OUT/$name.tar.gz" -C "$W" "$name"
done
cp "$W/summary.txt" "$OUT/summary.txt"
say "done: $(ls "$OUT" | xargs)"
