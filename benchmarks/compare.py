"""Run the real `sglang generate` once per arm (off / on / sweep points / explicit flag sets) and record
what each arm actually ran with, how fast it was and how much VRAM it took.

    python3 benchmarks/compare.py --model-path /tmp/models/Wan2.1-T2V-1.3B-Diffusers-random \
        --width 832 --height 480 --frames 17 --steps 8 --extra-flags "--attention-backend torch_sdpa" \
        --arms off,on,sweep --out /tmp/bench/wan13b-17f

Arms
  off         SGLANG_AUTOPERF unset: sglang's own defaults (plus --extra-flags)
  on          SGLANG_AUTOPERF=1, no flags of ours (plus --extra-flags)
  sweep       explicit layerwise-offload points (plugin off), from sweep_points(): a handful around
              the planner's prediction when sglang_autoperf.plan offers a cost model, else a grid
  --arm NAME="FLAGS"            an explicit flag set, plugin off
  --arm-autoperf NAME="FLAGS"   an explicit flag set, SGLANG_AUTOPERF=1
Flags are appended in the order: --extra-flags, then the arm's flags, so an arm's flag wins
(argparse keeps the last value).

Each run: OUT/runs/ARM.json (card, driver, versions, arm, command, settings read back from the log,
timings, VRAM, status), OUT/logs/ARM.log, OUT/perf/ARM.json (sglang's --perf-dump-path); and
OUT/summary.json. Status: ok | oom | timeout | failed | skipped (a failure is a result, not a crash).
`--free-gib X` holds the rest of the GPU in a separate process (benchmarks/ballast.py) for all arms.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROMPT = "a red car on the beach at sunset"

# --------------------------------------------------------------------------- perf dump parsing


def steady_steps(step_ms: list[float]) -> list[float]:
    """The denoise steps that measure steady state: drop step 0 (autotuning, first copies) and,
    when there are at least 8 steps, step 1 too."""
    skip = 2 if len(step_ms) >= 8 else 1
    return list(step_ms[skip:])


def step_stats(step_ms: list[float]) -> dict:
    """Median and spread of the steady steps; every value None when there are none."""
    s = steady_steps(step_ms)
    if not s:
        return {"n": 0, "median_ms": None, "min_ms": None, "max_ms": None, "q1_ms": None, "q3_ms": None,
                "iqr_ms": None}
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {"n": len(s), "median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s),
            "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1}


def parse_perf_dump(d: dict) -> dict:
    """Timings and VRAM from sglang's --perf-dump-path JSON (steps[], denoise_steps_ms[],
    memory_checkpoints{}, total_duration_ms)."""
    stages = {x["name"]: float(x["duration_ms"]) for x in d.get("steps", []) if "name" in x}
    steps_raw = d.get("denoise_steps_ms", [])
    if steps_raw and isinstance(steps_raw[0], dict):
        steps_raw = sorted(steps_raw, key=lambda x: x.get("step", 0))
        step_ms = [float(x["duration_ms"]) for x in steps_raw]
    else:
        step_ms = [float(x) for x in steps_raw]
    mem = d.get("memory_checkpoints", {}) or {}
    peak_alloc = max((float(v.get("peak_allocated_mb", 0) or 0) for v in mem.values()), default=None)
    peak_res = max((float(v.get("peak_reserved_mb", 0) or 0) for v in mem.values()), default=None)
    denoise = sum(v for k, v in stages.items() if k.startswith("DenoisingStage")) if stages else None
    return {
        "step_ms": step_ms,
        "steady": step_stats(step_ms),
        "step0_ms": step_ms[0] if step_ms else None,
        "denoise_stage_ms": denoise if any(k.startswith("DenoisingStage") for k in stages) else None,
        "total_ms": float(d["total_duration_ms"]) if d.get("total_duration_ms") is not None else None,
        "stages_ms": stages,
        "peak_allocated_mb": peak_alloc,
        "peak_reserved_mb": peak_res,
        "memory_checkpoints": mem,
    }


# --------------------------------------------------------------------------- log parsing

SERVER_ARG_KEYS = (
    "dit_layerwise_offload", "dit_offload_prefetch_size", "dit_layerwise_resident_layers",
    "dit_layerwise_residency_policy", "dit_layerwise_residency_lifetime", "layerwise_offload_components",
    "dit_cpu_offload", "text_encoder_cpu_offload", "vae_cpu_offload", "performance_mode",
    "attention_backend", "enable_torch_compile", "model_id", "num_gpus",
)
_READY_RE = re.compile(
    r"Layerwise offload ready for (?P<component>\S+?)(?: \((?P<cls>[^)]*)\))? in (?P<secs>[\d.]+)s: groups=(?P<groups>\d+), "
    r"layers=(?P<layers>\d+), prefetch/group=(?P<prefetch>[^,]+(?:, [\d.]+)*), "
    r"resident=(?P<resident>\d+)/(?P<total>\d+) \((?P<lifetime>[^)]*)\), policy=(?P<policy>[\w, ]+)")
_LOADED_RE = re.compile(
    r"Loaded (?P<component>\w+): (?P<cls>\w+) \((?P<source>[^)]*?) version\)\. model size: (?P<gb>[\d.]+|NA) GB")
_OOM_RE = re.compile(r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|\bOOM detected\b", re.I)
_ERROR_RE = re.compile(r"(Traceback|Error|error:|FAILED|Exception)")
_KV_RE = re.compile(r"([A-Za-z_][\w./-]*)=('[^']*'|\"[^\"]*\"|[^\s,;]+)")


def _num(s: str):
    try:
        f = float(s)
    except ValueError:
        return s.strip()
    return int(f) if f.is_integer() and "." not in s else f


def parse_server_args(log: str) -> dict | None:
    """The JSON sglang logs as `server_args: {...}` (the first one: the main process's)."""
    i = log.find("server_args: {")
    if i < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(log[i + len("server_args: "):])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


_LIVE_PLACEMENT_RE = re.compile(
    r"\[autoperf\] (?:calibration of \S+: (?:switched to|kept)|tuning cache hit for \S+:) "
    r"resident=(?P<resident>\d+) prefetch=(?P<prefetch>\d+) (?P<policy>leading|strided)")


def parse_log(log: str) -> dict:
    """What an arm actually ran with, read back from its log (never assumed from its flags)."""
    sa = parse_server_args(log)
    offload = []
    for m in _READY_RE.finditer(log):
        g = m.groupdict()
        offload.append({
            "component": g["component"], "groups": int(g["groups"]), "layers": int(g["layers"]),
            "prefetch": [_num(x) for x in g["prefetch"].split(",")],
            "resident": int(g["resident"]), "total": int(g["total"]),
            "lifetime": g["lifetime"], "policy": g["policy"].strip(),
        })
    loaded = {}
    for m in _LOADED_RE.finditer(log):
        loaded[m["component"]] = {"class": m["cls"], "source": m["source"],
                                  "size_gb": None if m["gb"] == "NA" else float(m["gb"])}
    autoperf_lines = [ln.strip() for ln in log.splitlines() if "[autoperf]" in ln]
    autoperf_kv: dict = {}
    for ln in autoperf_lines:
        for k, v in _KV_RE.findall(ln.split("[autoperf]", 1)[1]):
            autoperf_kv[k] = _num(v.strip("'\""))
    # the plugin changes the DiT placement live (calibration, or a cached result) after sglang's
    # load-time line: its last such line is what the steady steps ran with
    live = None
    for m in _LIVE_PLACEMENT_RE.finditer(log):
        live = {"resident": int(m["resident"]), "prefetch": int(m["prefetch"]), "policy": m["policy"]}
    tr = loaded.get("transformer")
    return {
        "autoperf_live_placement": live,
        "server_args": {k: sa.get(k) for k in SERVER_ARG_KEYS if k in sa} if sa else None,
        "layerwise_offload": offload,  # one entry per component sglang configured, as it logged it
        "loaded": loaded,
        "native_dit": None if tr is None else ("sgl-diffusion" in tr["source"] or "native" in tr["source"]),
        "autoperf_lines": autoperf_lines[:60],
        "autoperf": autoperf_kv,
    }


def effective_settings(parsed_log: dict) -> dict:
    """One flat view of the DiT offload settings that ran: sglang's own 'Layerwise offload ready'
    line wins over server_args (the plugin may change settings after server_args are logged)."""
    sa = parsed_log.get("server_args") or {}
    dit = next((o for o in parsed_log.get("layerwise_offload", []) if "transformer" in o["component"]), None)
    # other components (text encoder, VAE) may stream too; they say nothing about the DiT
    out = {"source": "offload-log" if dit else ("server_args" if sa else "none")}
    if not dit and sa.get("dit_layerwise_offload"):
        out["source"] = "server_args (no 'Layerwise offload ready' line seen)"
    if dit:
        out.update(layerwise_offload=True, resident_layers=dit["resident"], total_layers=dit["total"],
                   prefetch=dit["prefetch"][0] if len(dit["prefetch"]) == 1 else dit["prefetch"],
                   policy=dit["policy"])
    else:
        out.update(layerwise_offload=bool(sa.get("dit_layerwise_offload")) if sa else None,
                   resident_layers=sa.get("dit_layerwise_resident_layers"),
                   prefetch=sa.get("dit_offload_prefetch_size"), policy=sa.get("dit_layerwise_residency_policy"))
    live = parsed_log.get("autoperf_live_placement")
    if dit and live:
        out.update(resident_layers=live["resident"], prefetch=live["prefetch"], policy=live["policy"],
                   source="autoperf-live (after sglang's offload-log line: "
                          f"R={dit['resident']} P={dit['prefetch'][0]} {dit['policy']})")
    out["dit_cpu_offload"] = sa.get("dit_cpu_offload")
    out["performance_mode"] = sa.get("performance_mode")
    out["attention_backend"] = sa.get("attention_backend")
    return out


def reread_settings(folder: str) -> int:
    """Read each arm's settings back again from its saved log (`logs/<arm>.log`) into
    `runs/<arm>.json` and `summary.json`: for results taken before a log format was understood.
    Returns the number of arms whose settings changed."""
    changed = 0
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    for arm in summary.get("arms", []):
        log_path = os.path.join(folder, "logs", f"{arm['arm']}.log")
        if not os.path.isfile(log_path):
            continue
        with open(log_path, errors="replace") as f:
            settings = effective_settings(parse_log(f.read()))
        if settings != arm.get("settings"):
            changed += 1
        arm["settings"] = settings
        run_path = os.path.join(folder, "runs", f"{arm['arm']}.json")
        if os.path.isfile(run_path):
            with open(run_path) as f:
                run = json.load(f)
            run["settings"] = settings
            with open(run_path, "w") as f:
                json.dump(run, f, indent=1)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return changed


def classify(rc: int | None, log: str, perf: dict | None, timed_out: bool = False,
             expected_steps: int | None = None) -> tuple[str, str | None, list[str]]:
    """(status, reason, warnings). status: ok | oom | timeout | failed.

    sglang exits 0 after a failed request, so success needs a perf dump with every denoise step.
    "out of memory" in the log makes the run 'oom' unless that complete perf dump exists (sglang can
    recover, e.g. by falling back to offload): then it is 'ok' with a warning, since the timings are
    real for the settings read back from the log.
    """
    warnings: list[str] = []
    m = _OOM_RE.search(log or "")
    oom_line = None
    if m:
        start = log.rfind("\n", 0, m.start()) + 1
        end = log.find("\n", m.end())
        oom_line = log[start:end if end >= 0 else None].strip()[:300]
    complete = bool(perf and perf.get("step_ms")) and (
        expected_steps is None or len(perf["step_ms"]) >= expected_steps)
    if timed_out:
        return ("oom" if oom_line else "timeout"), (oom_line or "killed after the per-arm timeout"), warnings
    if oom_line and (not complete or rc not in (0, None)):
        return "oom", oom_line, warnings
    if rc not in (0, None):
        return "failed", f"exit code {rc}: {last_error_line(log)}", warnings
    if perf is None:
        return "failed", f"no perf dump (sglang exits 0 on failure): {last_error_line(log)}", warnings
    if not perf.get("step_ms"):
        return "failed", "perf dump has no denoise steps", warnings
    if not complete:
        warnings.append(f"perf dump has {len(perf['step_ms'])} of {expected_steps} denoise steps")
    if oom_line:
        warnings.append(f"out of memory in log, recovered: {oom_line}")
    return "ok", None, warnings


def last_error_line(log: str) -> str:
    lines = [ln.strip() for ln in (log or "").splitlines() if _ERROR_RE.search(ln)]
    if lines:
        return lines[-1][:300]
    tail = [ln.strip() for ln in (log or "").splitlines() if ln.strip() and not ln.startswith("# ")]
    return f"last log line: {tail[-1][:300]}" if tail else "empty log"


# --------------------------------------------------------------------------- model facts and sweep points


def dit_layer_count(model_path: str) -> int | None:
    try:
        with open(os.path.join(model_path, "transformer", "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    n = 0
    for key in ("num_layers", "num_single_layers"):
        if isinstance(cfg.get(key), int):
            n += cfg[key]
    return n or None


def component_bytes(model_path: str, component: str) -> int:
    d = os.path.join(model_path, component)
    if not os.path.isdir(d):
        return 0
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith((".safetensors", ".bin")))


@dataclass(frozen=True)
class SweepPoint:
    resident: int
    prefetch: int
    policy: str = "leading"

    @property
    def name(self) -> str:
        return f"sweep-r{self.resident}-p{self.prefetch}{'' if self.policy == 'leading' else '-' + self.policy}"

    def flags(self) -> str:
        return (f"--dit-layerwise-offload true --dit-layerwise-resident-layers {self.resident} "
                f"--dit-offload-prefetch-size {self.prefetch} --dit-layerwise-residency-policy {self.policy}")


def max_resident_estimate(model_path: str, free_gib: float | None) -> int | None:
    """How many DiT blocks fit next to the rest, by bytes alone (weights + a fixed activation margin)."""
    layers = dit_layer_count(model_path)
    if not layers:
        return None
    if free_gib is None:
        return layers
    dit = component_bytes(model_path, "transformer")
    others = sum(component_bytes(model_path, c) for c in ("text_encoder", "text_encoder_2", "vae"))
    per_layer = dit / layers if dit else 0
    if per_layer <= 0:
        return layers
    usable = free_gib * 2**30 * 0.85 - others - 3 * 2**30 - 0.1 * dit  # non-block weights, activations, context
    return max(0, min(layers, int(usable // per_layer)))


def default_grid(layers: int, r_max: int, max_points: int) -> list[SweepPoint]:
    """Points in priority order, so that truncating keeps the most telling ones."""
    hi = max(0, r_max - max(1, layers // 15))  # a little under the estimate: the estimate is crude
    mid = hi // 2
    cands = [SweepPoint(hi, 2), SweepPoint(0, 2), SweepPoint(mid, 2), SweepPoint(0, 1), SweepPoint(hi, 1),
             SweepPoint(hi, 2, "strided"), SweepPoint(0, 4), SweepPoint(mid, 1)]
    seen, out = set(), []
    for p in cands:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out[:max_points]


def _planner_points(model_path: str, workload: dict, free_bytes: int | None, max_points: int):
    """Ask sglang_autoperf.plan.sweep for points, if it can. Optional and isolated: any failure -> None.

    Contract (either is enough):
      sweep.benchmark_sweep_points(model_path, workload, free_bytes, max_points) -> [{resident, prefetch, policy}]
      sweep.predict_step_ms(model_path, workload, setting, free_bytes) -> float | None  (None: infeasible)
    """
    try:
        import importlib

        plan = importlib.import_module("sglang_autoperf.plan.sweep")
    except Exception as e:  # noqa: BLE001 - optional dependency
        return None, f"sglang_autoperf.plan.sweep not importable ({type(e).__name__})"
    try:
        fn = getattr(plan, "benchmark_sweep_points", None)
        if callable(fn):
            pts = [SweepPoint(int(p["resident"]), int(p["prefetch"]), str(p.get("policy", "leading")))
                   for p in fn(model_path, workload, free_bytes, max_points)]
            if pts:
                return pts[:max_points], "planner: benchmark_sweep_points"
        predict = getattr(plan, "predict_step_ms", None)
        if not callable(predict):
            return None, "sglang_autoperf.plan.sweep has no cost model (benchmark_sweep_points / predict_step_ms)"
        layers = dit_layer_count(model_path) or 0
        step = max(1, layers // 8)
        scored = []
        for r in sorted(set(list(range(0, layers + 1, step)) + [layers])):
            for p in (1, 2, 4):
                for pol in ("leading", "strided"):
                    pt = SweepPoint(r, p, pol)
                    ms = predict(model_path, workload, {"resident": r, "prefetch": p, "policy": pol}, free_bytes)
                    if ms is not None and math.isfinite(ms):
                        scored.append((ms, pt))
        if not scored:
            return None, "planner predicted no feasible point"
        scored.sort(key=lambda x: x[0])
        best = scored[0][1]
        feasible = {pt for _, pt in scored}
        around = [best, SweepPoint(max(0, best.resident - step), best.prefetch, best.policy),
                  SweepPoint(best.resident + step, best.prefetch, best.policy),
                  SweepPoint(best.resident, best.prefetch + 1, best.policy),
                  SweepPoint(best.resident, max(1, best.prefetch - 1), best.policy)]
        pts, seen = [], set()
        for pt in around + [pt for _, pt in scored]:
            if pt in feasible and pt not in seen:
                seen.add(pt)
                pts.append(pt)
        return pts[:max_points], f"planner: predict_step_ms (best {best.name} at {scored[0][0]:.1f} ms)"
    except Exception as e:  # noqa: BLE001 - never let the planner break a benchmark
        return None, f"planner failed: {type(e).__name__}: {e}"


def sweep_points(model_path: str, workload: dict, free_gib: float | None = None,
                 max_points: int = 4) -> tuple[list[SweepPoint], str]:
    """Sweep points and where they came from (planner, or the default grid and why)."""
    free_bytes = None if free_gib is None else int(free_gib * 2**30)
    pts, why = _planner_points(model_path, workload, free_bytes, max_points)
    if pts:
        return pts, why
    layers = dit_layer_count(model_path)
    if not layers:
        return [SweepPoint(0, 2), SweepPoint(0, 1)][:max_points], f"default grid (no DiT config; {why})"
    r_max = max_resident_estimate(model_path, free_gib)
    return default_grid(layers, r_max if r_max is not None else layers, max_points), \
        f"default grid, {layers} layers, ~{r_max} fit by bytes ({why})"


# --------------------------------------------------------------------------- environment facts


def card_info() -> dict:
    """The card the arms ran on, from the plugin's own NVML probe (every GPU, not only the visible)."""
    info: dict = {"name": None, "driver": None, "memory_total_mib": None, "count": 0, "source": None}
    try:
        from sglang_autoperf.probe.gpu import probe_gpus

        gpu = probe_gpus(use_env=False)
    except Exception as e:  # noqa: BLE001 - the plugin not importable here: the card stays unnamed
        return dict(info, source=f"probe unavailable ({type(e).__name__})")
    if gpu.devices:
        first = gpu.devices[0]
        info.update(name=first.name, driver=gpu.driver_version, memory_total_mib=first.memory_total_bytes // 2**20,
                    count=len(gpu.devices), source=gpu.source)
    return info


def versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m\nv={}\n"
            "for p in ('sglang','torch','diffusers','transformers','sglang-autoperf','triton'):\n"
            "    try: v[p]=m.version(p)\n    except Exception: v[p]=None\n"
            "if not v['sglang']:\n    try:\n        import sglang.version as s; v['sglang']=s.__version__\n    except Exception: pass\n"
            "print(json.dumps(v))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


# --------------------------------------------------------------------------- running


@dataclass
class Arm:
    name: str
    flags: str = ""
    autoperf: bool = False
    kind: str = "explicit"  # off | on | sweep | explicit
    point: dict | None = None


@dataclass
class Workload:
    width: int
    height: int
    frames: int
    steps: int
    prompt: str = DEFAULT_PROMPT
    seed: int = 0


def generate_cmd(sglang_cmd: str, model_path: str, wl: Workload, perf_path: str, model_id: str | None,
                 extra_flags: str, arm_flags: str) -> list[str]:
    cmd = shlex.split(sglang_cmd) + ["generate", "--model-path", model_path, "--prompt", wl.prompt,
                                     "--width", str(wl.width), "--height", str(wl.height),
                                     "--num-inference-steps", str(wl.steps), "--seed", str(wl.seed),
                                     "--no-save-output", "--perf-dump-path", perf_path]
    if wl.frames > 1:
        cmd += ["--num-frames", str(wl.frames)]
    if model_id:
        cmd += ["--model-id", model_id]
    return cmd + shlex.split(extra_flags) + shlex.split(arm_flags)


# A trace dir traces calibration steps and every Nth served step; N this large leaves at most
# step 0 of a request traced, and step 0 is not a steady step.
SERVED_TRACE_EVERY = 1_000_000


def arm_env(arm: Arm, extra: list[str], out: str, base: dict) -> dict:
    """The environment of one arm. Plugin arms write their calibration's traces and keep their
    tuning cache in the case's folder: arms of one case share it, a new case starts cold (on a warm
    machine a cache in $HOME carried one call's calibration into the next, 2026-11-27). Served
    steps are not traced, as for a user: a traced step costs ~3% in the GPU sandbox, and tracing
    every step put that cost on the plugin's side of every comparison before 2026-11-27 (evening).
    `--env K=V` wins."""
    env = dict(base)
    env.pop("SGLANG_AUTOPERF", None)
    if arm.autoperf:
        env["SGLANG_AUTOPERF"] = "1"
        env.setdefault("SGLANG_AUTOPERF_TRACE_DIR", os.path.join(out, "traces", arm.name))
        env.setdefault("SGLANG_AUTOPERF_TRACE_EVERY", str(SERVED_TRACE_EVERY))
        env.setdefault("SGLANG_AUTOPERF_CACHE_DIR", os.path.join(out, "cache"))
    for kv in extra:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def run_arm(arm: Arm, a, wl: Workload, out: str, common: dict) -> dict:
    log_path = os.path.join(out, "logs", f"{arm.name}.log")
    perf_path = os.path.join(out, "perf", f"{arm.name}.json")
    for p in (log_path, perf_path):
        if os.path.exists(p):
            os.remove(p)
    env = arm_env(arm, a.env, out, os.environ)
    if arm.autoperf:
        os.makedirs(env["SGLANG_AUTOPERF_TRACE_DIR"], exist_ok=True)
    cmd = generate_cmd(a.sglang_cmd, a.model_path, wl, perf_path, a.model_id, a.extra_flags, arm.flags)
    print(f"[compare] {arm.name}: {'SGLANG_AUTOPERF=1 ' if arm.autoperf else ''}{shlex.join(cmd)}", flush=True)
    t0 = time.time()
    timed_out = False
    rc = None
    with open(log_path, "w") as logf:
        logf.write(f"# {'SGLANG_AUTOPERF=1 ' if arm.autoperf else ''}{shlex.join(cmd)}\n")
        logf.flush()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
            rc = proc.returncode if rc is None else rc
    wall = time.time() - t0
    log = open(log_path, errors="replace").read()
    perf = None
    if os.path.exists(perf_path):
        try:
            with open(perf_path) as f:
                perf = parse_perf_dump(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as e:
            perf = None
            log += f"\n[compare] unreadable perf dump: {e}"
    status, reason, warnings = classify(rc, log, perf, timed_out, wl.steps)
    parsed = parse_log(log)
    result = {
        **common,
        "arm": arm.name, "arm_kind": arm.kind, "autoperf": arm.autoperf, "arm_flags": arm.flags,
        "sweep_point": arm.point, "command": shlex.join(cmd),
        "env": {"SGLANG_AUTOPERF": env.get("SGLANG_AUTOPERF")},
        "status": status, "reason": reason, "warnings": warnings, "returncode": rc, "wall_s": round(wall, 1),
        "settings": effective_settings(parsed), "log_readback": parsed,
        "timings": None if perf is None else {k: perf[k] for k in
                                              ("steady", "step_ms", "step0_ms", "denoise_stage_ms", "total_ms",
                                               "stages_ms")},
        "vram": None if perf is None else {"peak_allocated_mb": perf["peak_allocated_mb"],
                                           "peak_reserved_mb": perf["peak_reserved_mb"],
                                           "memory_checkpoints": perf["memory_checkpoints"]},
        "log": os.path.relpath(log_path, out), "perf_dump": os.path.relpath(perf_path, out) if perf else None,
    }
    med = (perf or {}).get("steady", {}).get("median_ms")
    print(f"[compare] {arm.name}: {status}{' (' + reason + ')' if reason else ''}, "
          f"steady step {med if med is None else round(med, 1)} ms, wall {wall:.0f}s, "
          f"ran with {result['settings']}", flush=True)
    with open(os.path.join(out, "runs", f"{arm.name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    """End the sglang process group we started (workers included)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; give the rest of the group one more signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Ballast:
    """benchmarks/ballast.py in a separate process: keeps only `free_gib` of the GPU free."""

    def __init__(self, free_gib: float, out: str, python: str):
        self.free_gib, self.out, self.python = free_gib, out, python
        self.proc: subprocess.Popen | None = None
        self.info: dict = {"free_gib_target": free_gib}

    def __enter__(self):
        ready = os.path.join(self.out, "ballast.ready.json")
        if os.path.exists(ready):
            os.remove(ready)
        self.logf = open(os.path.join(self.out, "logs", "ballast.log"), "w")
        self.proc = subprocess.Popen([self.python, os.path.join(HERE, "ballast.py"), "--free-gib", str(self.free_gib),
                                      "--ready-file", ready, "--parent-pid", str(os.getpid())],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if os.path.exists(ready):
                with open(ready) as f:
                    self.info.update(json.load(f))
                print(f"[compare] ballast pid {self.proc.pid}: {self.info}", flush=True)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"ballast did not become ready (see {self.logf.name})")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        return False


def build_arms(a, wl: Workload) -> tuple[list[Arm], dict]:
    arms: list[Arm] = []
    sweep_meta: dict = {}
    for name in [x.strip() for x in a.arms.split(",") if x.strip()]:
        if name == "off":
            arms.append(Arm("off", "", False, "off"))
        elif name == "on":
            arms.append(Arm("on", "", True, "on"))
        elif name == "sweep":
            pts, why = sweep_points(a.model_path, asdict(wl), a.free_gib, a.sweep_max)
            sweep_meta = {"source": why, "points": [asdict(p) for p in pts]}
            print(f"[compare] sweep points ({why}): {[p.name for p in pts]}", flush=True)
            arms += [Arm(p.name, p.flags(), False, "sweep", asdict(p)) for p in pts]
        else:
            raise SystemExit(f"unknown built-in arm {name!r} (off, on, sweep; use --arm NAME=FLAGS)")
    for spec, autoperf in [(s, False) for s in a.arm] + [(s, True) for s in a.arm_autoperf]:
        name, sep, flags = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--arm expects NAME=FLAGS, got {spec!r}")
        arms.append(Arm(name.strip(), flags.strip(), autoperf, "explicit"))
    if a.order:
        order = [x.strip() for x in a.order.split(",")]
        arms.sort(key=lambda x: order.index(x.name) if x.name in order else
                  (order.index("sweep") if x.kind == "sweep" and "sweep" in order else len(order)))
    names = [x.name for x in arms]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"duplicate arm names: {sorted(dup)}")
    return arms, sweep_meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model-path", help="model folder (required unless --reread)")
    ap.add_argument("--model-id", default=None, help="passed to sglang (e.g. FLUX.1-dev)")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=1, help="1 for images")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="off,on,sweep", help="built-in arms, comma list of off,on,sweep ('' for none)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=FLAGS", help="explicit arm, plugin off")
    ap.add_argument("--arm-autoperf", action="append", default=[], metavar="NAME=FLAGS",
                    help="explicit arm with SGLANG_AUTOPERF=1")
    ap.add_argument("--order", default="", help="run order by arm name ('sweep' stands for all sweep points)")
    ap.add_argument("--extra-flags", default="", help="flags for every arm (before the arm's own)")
    ap.add_argument("--sweep-max", type=int, default=4, help="at most this many sweep points")
    ap.add_argument("--free-gib", type=float, default=None, help="leave only this much GPU memory free (ballast)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for every arm")
    ap.add_argument("--sglang-cmd", default="sglang",
                    help="command that stands for `sglang`, e.g. 'python3 -c \"from sglang.cli.main import main; main()\"'")
    ap.add_argument("--python", default=sys.executable, help="python for the ballast and version probe")
    ap.add_argument("--timeout", type=float, default=300, help="per-arm timeout (s)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="wall-clock seconds for all arms; an arm that would not finish in time is skipped")
    ap.add_argument("--arm-estimate", type=float, default=90, help="expected seconds per arm until one was measured")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait between arms")
    ap.add_argument("--case", default=None, help="label stored in every result")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reread", action="store_true",
                    help="run nothing: read the settings of the arms in --out back again from their logs")
    ap.add_argument("--dry-run", action="store_true", help="print the arms and commands, run nothing")
    a = ap.parse_args(argv)

    if a.reread:
        print(f"[compare] re-read settings of {reread_settings(a.out)} arm(s) in {a.out}")
        return 0
    if not a.model_path:
        ap.error("--model-path is required")
    t_start = time.time()
    wl = Workload(a.width, a.height, a.frames, a.steps, a.prompt, a.seed)
    out = os.path.abspath(a.out)
    for sub in ("runs", "logs", "perf"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    arms, sweep_meta = build_arms(a, wl)
    if a.dry_run:
        for arm in arms:
            cmd = generate_cmd(a.sglang_cmd, a.model_path, wl, f"{out}/perf/{arm.name}.json", a.model_id,
                               a.extra_flags, arm.flags)
            print(f"{arm.name:28s} {'SGLANG_AUTOPERF=1 ' if arm.autoperf else ''}{shlex.join(cmd)}")
        return 0

    common = {
        "case": a.case, "model_path": a.model_path, "model_id": a.model_id, "workload": asdict(wl),
        "dit_layers": dit_layer_count(a.model_path),
        "extra_flags": a.extra_flags, "card": card_info(), "versions": versions(a.python),
        "budget": {"free_gib": a.free_gib},
    }
    results: list[dict] = []
    ballast = Ballast(a.free_gib, out, a.python) if a.free_gib is not None else None
    try:
        if ballast:
            ballast.__enter__()
            common["budget"] = dict(ballast.info)
        per_arm = a.arm_estimate
        for arm in arms:
            elapsed = time.time() - t_start
            if a.deadline is not None and elapsed + per_arm > a.deadline:
                r = {**common, "arm": arm.name, "arm_kind": arm.kind, "autoperf": arm.autoperf,
                     "arm_flags": arm.flags, "sweep_point": arm.point, "status": "skipped",
                     "reason": f"deadline: {elapsed:.0f}s used + ~{per_arm:.0f}s > {a.deadline:.0f}s",
                     "settings": None, "timings": None, "vram": None}
                with open(os.path.join(out, "runs", f"{arm.name}.json"), "w") as f:
                    json.dump(r, f, indent=1)
                print(f"[compare] {arm.name}: skipped ({r['reason']})", flush=True)
                results.append(r)
                continue
            r = run_arm(arm, a, wl, out, common)
            results.append(r)
            walls = [x["wall_s"] for x in results if x.get("wall_s") is not None]
            # the first arm carries one-time costs (JIT builds, page cache): prefer the later ones
            per_arm = max(walls[1:] or walls or [per_arm - 5]) + 5  # a 0.0 s arm is a measurement too
            time.sleep(a.settle)  # let the driver reclaim the workers' memory
    except KeyboardInterrupt:
        print("[compare] interrupted; writing what ran", flush=True)
    finally:
        if ballast:
            ballast.__exit__(None, None, None)
        write_summary(out, common, sweep_meta, results, time.time() - t_start)
    return 0


def write_summary(out: str, common: dict, sweep_meta: dict, results: list[dict], seconds: float) -> dict:
    def brief(r):
        t = r.get("timings") or {}
        v = r.get("vram") or {}
        return {"arm": r["arm"], "kind": r.get("arm_kind"), "autoperf": r.get("autoperf"), "status": r["status"],
                "reason": r.get("reason"), "warnings": r.get("warnings"), "steady": t.get("steady"), "denoise_stage_ms": t.get("denoise_stage_ms"),
                "total_ms": t.get("total_ms"), "peak_allocated_mb": v.get("peak_allocated_mb"),
                "settings": r.get("settings"), "sweep_point": r.get("sweep_point"), "wall_s": r.get("wall_s")}

    summary = {**common, "sweep": sweep_meta, "seconds": round(seconds, 1), "arms": [brief(r) for r in results]}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    sys.exit(main())
