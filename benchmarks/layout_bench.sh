#!/usr/bin/env bash
# Issue 20: every valid multi-GPU layout of a Wan2.1-14B-shaped random checkpoint (832x480, 81 frames)
# on N GPUs (2; 4 when lent), each in its own processes, alternated (A B C A B C ...), beside:
#   sglang-default  no layout flag, plugin off (what sglang picks for N GPUs)
#   plugin          SGLANG_AUTOPERF=1, no layout flag (the plugin's own choice)
#   plugin-pinned   SGLANG_AUTOPERF=1 with the layout the plugin chose pinned: its output must be
#                   bit-identical to the sglang arm of that layout (the lossless check)
# Layout arms pin every layout field as a user would type it (--cfg-parallel-size, --ulysses-degree,
# --ring-degree, --kv-gather-degree, --use-fsdp-inference); the list comes from plan/layout.py's own
# rules (benchmarks/layout_table.py arms), so exactly what the planner chooses among is measured.
#
#   source .gpu-kit/setup_on_gpu.sh > /tmp/setup.log 2>&1; OUT=$OUT bash benchmarks/layout_bench.sh
#
# One process of a 14B 81-frame arm takes ~2-2.5 min in the sandbox (~50 s sglang start, the 28.6 GB
# checkpoint load, the steps, the VAE decode): a whole case (9 arms x 3 rounds on 2 GPUs) does not fit
# one 10-minute call. Split it: ARMS picks the arms of this call and ROUND0 numbers its rounds; every
# call's arms.jsonl goes to `layout_table.py table` together.
# Env: NGPU (default: 4 if 4+ visible, else 2), ROUNDS (3), ROUND0 (1), STEPS (6), FRAMES (81),
# REQS (1; the table uses each process's last request, its steps after step 0), ATTN (torch_sdpa, as
# the sandbox has no FA3: ring layouts need fa/sage_attn and drop out), ARMS (labels, default all),
# BUDGET_S (570), ARM_EST_S (150: an arm that would not finish in what is left is skipped and said so),
# R (work folder, /tmp/layout), MODEL (checkpoint folder; built by make_checkpoints.py when missing),
# GPU_SNAPSHOT (plan and predict from a recorded NVML snapshot instead of the live GPUs), GEN (the
# request runner, default gen_api.py; the CPU test puts a stand-in there).
# Writes $OUT/: arms.jsonl, table.md, layouts.svg, winner.json, predicted.json, plan.json, prepare.txt,
# autoperf_lines.txt, logs.tar.gz.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
R=${R:-/tmp/layout}
ROUNDS=${ROUNDS:-3}
ROUND0=${ROUND0:-1}
STEPS=${STEPS:-6}
FRAMES=${FRAMES:-81}
REQS=${REQS:-1}
ATTN=${ATTN:-torch_sdpa}
BUDGET_S=${BUDGET_S:-570}
ARM_EST_S=${ARM_EST_S:-150}
GEN=${GEN:-$HERE/gen_api.py}
SNAP=(); [ -n "${GPU_SNAPSHOT:-}" ] && SNAP=(--gpu-snapshot "$GPU_SNAPSHOT")
T0=$(date +%s)
mkdir -p "$R" "$OUT"
export PYTHONUNBUFFERED=1 SGLANG_AUTOPERF_CACHE_DIR=$R/cache
say() { echo "[layout $(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) - 20 )); }

VISIBLE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
N=${NGPU:-$(( VISIBLE >= 4 ? 4 : 2 ))}
if [ "$VISIBLE" -lt "$N" ]; then say "needs $N GPUs, $VISIBLE visible"; exit 2; fi
say "$N of $VISIBLE GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); $(nvidia-smi topo -m 2>/dev/null | sed -n 2p | tr -s ' ' | cut -c1-80)"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1

M=${MODEL:-$($PY "$HERE/make_checkpoints.py" wan2.1-t2v-14b --print-path | tail -1)}
[ -f "$M/_source.json" ] || { say "building $M"; $PY "$HERE/make_checkpoints.py" wan2.1-t2v-14b --out "$M" > "$R/build.log" 2>&1 || { tail -5 "$R/build.log"; exit 3; }; }

# One probe: every valid layout (plan/layout.py's rules) and the extra arms, the prediction for each
# layout, and the plugin's plan for this count (the planner the plugin runs, with the same pins).
$PY "$HERE/layout_table.py" prepare "$M" "$N" "$R" --attention-backend "$ATTN" --frames "$FRAMES" --steps "$STEPS" \
  "${SNAP[@]}" 2> "$R/prepare.err" | tee "$OUT/prepare.txt" || { tail -5 "$R/prepare.err"; exit 4; }
cp "$R/predicted.json" "$R/plan.json" "$OUT/" 2>/dev/null || { tail -5 "$R/prepare.err"; exit 4; }
mv "$R/arms.tsv" "$R/all_arms.tsv"
if [ -n "${ARMS:-}" ]; then
  awk -F'\t' -v want=" $ARMS " 'index(want, " " $1 " ")' "$R/all_arms.tsv" > "$R/arms.tsv"
else
  cp "$R/all_arms.tsv" "$R/arms.tsv"
fi
say "arms: $(cut -f1 "$R/arms.tsv" | xargs)"
mapfile -t LINES < "$R/arms.tsv"
COUNT=${#LINES[@]}

run_arm() {  # round, index in this round (for the port), arm line
  local round=$1 idx=$2 name label ap sargs
  IFS=$'\t' read -r name label ap sargs <<< "$3"
  local d="$R/r$round-$name"
  if [ "$(left)" -lt "$ARM_EST_S" ]; then
    say "round $round $name skipped: $(left)s left, it needs ~${ARM_EST_S}s"; echo "== r$round $name skipped" >> "$OUT/autoperf_lines.txt"; return 0
  fi
  mkdir -p "$d"
  say "round $round $name ($label, autoperf=$ap)"
  if [ "$ap" = 1 ]; then export SGLANG_AUTOPERF=1; else unset SGLANG_AUTOPERF; fi
  timeout $(( $(left) - 5 )) $PY "$GEN" --model-path "$M" --out "$d/run.json" --width 832 --height 480 \
    --frames "$FRAMES" --steps "$STEPS" --requests "$REQS" --server-args "$sargs" \
    --master-port $(( 30100 + (round % 50) * 20 + idx )) > "$d/log.txt" 2>&1
  local rc=$?
  $PY - "$d/run.json" "$name" "$round" "$label" "$ap" "$rc" "$FRAMES" >> "$OUT/arms.jsonl" <<'EOF'
import json, sys
path, arm, rnd, label, ap, rc, frames = sys.argv[1:]
try:
    rec = json.load(open(path))
except Exception as exc:
    rec = {"error": f"no record ({type(exc).__name__})"}
rec.update(arm=arm, round=int(rnd), label=label, autoperf=ap == "1", rc=int(rc), shape=f"832x480x{frames}f")
print(json.dumps(rec))
EOF
  tail -1 "$OUT/arms.jsonl" | $PY -c "import json,sys; r=json.loads(sys.stdin.read()); q=[x for x in r.get('requests',[]) if x.get('status')=='ok']; print('  rc', r['rc'], 'step ms', q[-1]['steady_median_ms'] if q else None, 'peak MB', q[-1]['peak_memory_mb'] if q else None, r.get('error',''))"
  { echo "== r$round $name"; grep -a "\[autoperf" "$d/log.txt" | cut -c1-400; grep -aE "Error|error:|OutOfMemory" "$d/log.txt" | tail -3; } >> "$OUT/autoperf_lines.txt"
}

for (( r = ROUND0; r < ROUND0 + ROUNDS; r++ )); do
  for (( i = 0; i < COUNT; i++ )); do  # each round starts one arm later: no arm always runs first
    run_arm "$r" "$i" "${LINES[$(( (i + r) % COUNT ))]}"
  done
done

$PY "$HERE/layout_table.py" table "$OUT/arms.jsonl" --predicted "$OUT/predicted.json" --svg "$OUT/layouts.svg" \
  --winner "$OUT/winner.json" > "$OUT/table.md" 2> "$R/table.err"
cat "$OUT/table.md"
tar czf "$OUT/logs.tar.gz" -C "$R" --exclude cache . 2>/dev/null
say "done"
