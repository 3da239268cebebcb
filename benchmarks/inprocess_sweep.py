"""In-process placement sweep: load the model once in one sglang process and measure many
placements per layer list, a few steps each, interleaved with a fixed reference placement so
that drift of the card cancels (issue 17, item 5).

    python3 benchmarks/inprocess_sweep.py --model-path /tmp/models/FLUX.1-dev-random --model-id FLUX.1-dev \
        --budgets 16GiB,24GiB --out /tmp/sweep [--width 1024 --height 1024 --time-budget 420]
    python3 benchmarks/inprocess_sweep.py --model-path /tmp/models/Z-Image-Turbo-random --budgets 10GiB \
        --plugin-cache /tmp/e2e/cache --plans /tmp/plans --out /tmp/sweep   # any family sglang streams

1. The planner's start choice for each budget (`sglang_autoperf.cli plan --json`, the live GPU,
   before the model loads) and its memory terms.
2. A schedule: a grid of resident counts per list (prefetch 2, strided), everything resident,
   each planner choice and its neighbours, a few points traced by the overlap monitor. With
   --plugin-cache: the plugin's cached choice (what its live calibration kept) and its neighbours
   right after everything resident, the planner's choices without neighbours.
3. One sglang process (the Python API, as benchmarks/gen_api.py) with offload on and the
   benchmarks-only plugin under benchmarks/sweep_support, which applies each placement between
   denoising steps (sglang_contract.set_manager_placement, one manager per list) and records the
   steps and the memory; then one round of neighbours around each budget's best point.
4. summary.json and table.md: per point the drift-corrected step, measured peak (allocator
   reserved peak + non-allocator use), predicted peak (the planner's memory terms with this
   point's placed bytes), the floor max(all-resident step of this process, streamed bytes /
   measured pinned H2D rate), feasibility per budget; per budget the best point, its floor, the
   all-resident point and the planner's choice with its ratio to the best.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SUPPORT = os.path.join(HERE, "sweep_support")
sys.path.insert(0, SUPPORT)

from autoperf_sweep import OUT_ENV, SCHEDULE_ENV, normalized_ms  # noqa: E402

from sglang_autoperf.plan.budget import parse_vram_budget  # noqa: E402
from sglang_autoperf.plan.cost import memory_breakdown  # noqa: E402
from sglang_autoperf.retune.lists import (  # noqa: E402
    LayerList, ListPlacement, buffer_bytes, list_key, resident_bytes, streamed_bytes)
from sglang_autoperf.trace import Placement  # noqa: E402

GiB = 1024**3


def planner_choice(model_path: str, budget: str, width: int, height: int, steps: int,
                   model_id: str | None = None) -> dict:
    """The plan the plugin would start from under `budget` (its CLI, on the live GPU)."""
    cmd = [sys.executable, "-m", "sglang_autoperf.cli", "plan", "--model-path", model_path, "--vram-budget", budget,
           "--width", str(width), "--height", str(height), "--steps", str(steps), "--json"]
    if model_id:
        cmd += ["--model-id", model_id]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    start = out.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"plan for {budget} printed no JSON: {out.stderr[-400:]}")
    return json.loads(out.stdout[start:])


def layer_lists(model_path: str, model_id: str | None = None) -> tuple[list[LayerList], int]:
    from sglang_autoperf.probe.model import probe_model

    dit = probe_model(model_path, model_id).dit
    return [LayerList(list_key("transformer", g.name), tuple(g.block_bytes)) for g in dit.block_groups], dit.non_block_bytes


def load_plans(path: str, names: list[str]) -> dict[str, dict]:
    """Plans written beforehand (`sglang_autoperf.cli plan --json` per budget, e.g. while the card was
    busy with another process): {budget: plan}; a budget missing there is planned now."""
    with open(path) as f:
        plans = json.load(f)
    if not isinstance(plans, dict) or not all(isinstance(plans.get(b, {}), dict) for b in names):
        raise ValueError(f"{path}: not a map of budget -> plan JSON")
    return {b: plans[b] for b in names if b in plans}


def cached_choice(cache_dir: str, lists: list[LayerList]) -> ListPlacement | None:
    """The placement the plugin's live calibration kept, read by the plugin's own cache
    (cache.TuningCache: per list where it stored one, else its one placement on the single list);
    the newest calibration, compile checks skipped. None when the folder holds no calibration."""
    from sglang_autoperf.cache import TuningCache

    results = [r for _, r in TuningCache(cache_dir).entries() if r.compiled is None]
    if not results:
        return None
    chosen = results[-1].chosen()
    if isinstance(chosen, ListPlacement):
        return chosen
    if len(lists) != 1:
        raise ValueError(f"{cache_dir}: one placement cached for a DiT with {len(lists)} layer lists")
    return ListPlacement(((lists[0].key, chosen),))


def planned_placement(lists: list[LayerList], plan: dict) -> ListPlacement:
    d = plan["dit"]
    if not d.get("offload"):
        return ListPlacement(tuple((ll.key, Placement(ll.count, 1, "leading")) for ll in lists))
    return ListPlacement(tuple((ll.key, Placement(min(int(r), ll.count), max(1, int(round(d["prefetch_layers"]))),
                                                  d["policy"])) for ll, r in zip(lists, d["resident_per_group"])))


def predicted_peak(lists: list[LayerList], plan: dict, placement: ListPlacement) -> int:
    """The planner's peak for its own choice, moved by what this placement changes in the planner's
    memory terms (plan/cost.memory_breakdown: placed weights and buffers, with their fragmentation
    share), the buffers as retune/lists.buffer_bytes counts them. The planner's own choice keeps
    exactly the planner's number."""
    m = plan["predicted"]["memory"]
    choice = planned_placement(lists, plan)

    def terms(p: ListPlacement) -> int:
        return memory_breakdown(dit_weights=resident_bytes(lists, p), prefetch_buffers=buffer_bytes(lists, p),
                                activations=m["activations"], components=m["components"]).total

    return m["total"] + terms(placement) - terms(choice)


def _point(label: str, placement: ListPlacement, kind: str = "grid", trace: bool = False) -> dict:
    return {"label": label, "kind": kind, "lists": placement.to_dict(), "trace": trace}


PLUGIN_LABEL = "plugin's choice (cache)"


def _near(lists: list[LayerList], label: str, choice: ListPlacement, kind: str) -> list[dict]:
    """A choice's neighbours: each list's resident count +-1/+-2, prefetch -1/+1/+2 on every list,
    the other policy on every list."""
    out = []
    for ll in lists:
        p = choice.get(ll.key)
        for r in (p.resident_layers - 2, p.resident_layers - 1, p.resident_layers + 1, p.resident_layers + 2):
            if 0 <= r <= ll.count:
                out.append(_point(f"{label} {ll.key.rsplit('.', 1)[-1]} r{r}",
                                  choice.with_list(ll.key, Placement(r, p.prefetch_layers, p.policy)), kind))
    first = choice.lists[0][1]
    for f in (first.prefetch_layers - 1, first.prefetch_layers + 1, first.prefetch_layers + 2):
        if f >= 1:
            out.append(_point(f"{label} prefetch {f}", ListPlacement(tuple(
                (k, Placement(p.resident_layers, f, p.policy)) for k, p in choice.lists)), kind))
    other = "leading" if first.policy == "strided" else "strided"
    out.append(_point(f"{label} {other}", ListPlacement(tuple(
        (k, Placement(p.resident_layers, p.prefetch_layers, other)) for k, p in choice.lists)), kind))
    return out


def schedule_points(lists: list[LayerList], choices: dict[str, ListPlacement], grid: int,
                    plugin: ListPlacement | None = None) -> list[dict]:
    """Planner choices and neighbours first (they matter most if time runs out), then the grid.
    With the plugin's choice: it and its neighbours first, the planner's choices without theirs."""
    points, seen = [], set()

    def add(p: dict) -> None:
        key = json.dumps(p["lists"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            points.append(p)

    everything = ListPlacement(tuple((ll.key, Placement(ll.count, 1, "strided")) for ll in lists))
    add(_point("all-resident", everything, "all-resident", trace=True))
    if plugin is not None:
        add(_point(PLUGIN_LABEL, plugin, "plugin", trace=True))
        for p in _near(lists, "plugin", plugin, "plugin-near"):
            add(p)
    for name, choice in choices.items():
        add(_point(f"planner-{name}", choice, "planner", trace=True))
        for p in ([] if plugin is not None else _near(lists, f"planner-{name}", choice, "planner-near")):
            add(p)
    first, *rest = lists
    if rest:  # with one list this point is everything resident
        add(_point("lowest-compute-per-byte list resident", ListPlacement(
            ((first.key, Placement(first.count, 2, "strided")),) + tuple((ll.key, Placement(0, 4, "strided"))
                                                                         for ll in rest)), "grid", trace=True))
    steps = [sorted({round(i * ll.count / (grid - 1)) for i in range(grid)}) for ll in lists]
    for combo in _product(steps):
        add(_point("grid " + " ".join(f"r{r}" for r in combo), ListPlacement(tuple(
            (ll.key, Placement(r, 2, "strided")) for ll, r in zip(lists, combo)))))
    return points


def focus_points(planned: list[dict], path: str, repeat: int, kinds=("all-resident", "planner")) -> list[dict]:
    """All-resident and the planner's choices from `planned`, then the points in `path`; every one
    `repeat` times, round-robin (a point's blocks spread over the run, each with its own references)."""
    with open(path) as f:
        extra = [{"label": p["label"], "kind": p.get("kind", "focus"), "lists": ListPlacement.from_dict(p["lists"]).to_dict(),
                  "trace": bool(p.get("trace"))} for p in json.load(f)]
    kept = [p for p in planned if p["kind"] in kinds]
    keep = kept + extra if "all-resident" in kinds else extra + kept  # beside a ballast: likely OOMs last
    return [dict(p, trace=p["trace"] and i == 0) for i in range(max(1, repeat)) for p in keep]


def _product(steps: list[list[int]]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for values in steps:
        out = [o + (v,) for o in out for v in values]
    return out


def sweep_process_args(args, schedule: dict, out_dir: str) -> dict:
    """The schedule written where the worker plugin reads it, the environment that loads that plugin
    (and not the plugin proper: the schedule sets placements itself), and the sweep's ServerArgs."""
    path = os.path.join(out_dir, "schedule.json")
    with open(path, "w") as f:
        json.dump(schedule, f, indent=1)
    os.environ[SCHEDULE_ENV] = path
    os.environ[OUT_ENV] = out_dir
    os.environ["PYTHONPATH"] = os.pathsep.join([SUPPORT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ.pop("SGLANG_AUTOPERF", None)
    server_args = {"num_gpus": 1, "attention_backend": "torch_sdpa", "dit_layerwise_offload": True,
                   "dit_layerwise_resident_layers": 0, "dit_offload_prefetch_size": 2,
                   "dit_layerwise_residency_policy": "strided", **json.loads(getattr(args, "server_args", "{}"))}
    if args.model_id:
        server_args["model_id"] = args.model_id
    return server_args


def run_sweep(args, schedule: dict, out_dir: str) -> dict:
    """One sglang process: requests until the worker plugin says the schedule is done."""
    server_args = sweep_process_args(args, schedule, out_dir)
    from sglang.multimodal_gen import DiffGenerator

    if args.free_gib is not None:  # a real limit: only this much of the card is free (ballast process)
        from compare import Ballast

        os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
        with Ballast(args.free_gib, out_dir, sys.executable) as ballast:
            run = _generate(args, schedule, out_dir, server_args, DiffGenerator)
        return dict(run, ballast=ballast.info)
    return _generate(args, schedule, out_dir, server_args, DiffGenerator)


def _generate(args, schedule: dict, out_dir: str, server_args: dict, DiffGenerator) -> dict:
    t0 = time.time()
    generator = DiffGenerator.from_pretrained(model_path=args.model_path, **server_args)
    run = {"server_args": server_args, "startup_s": time.time() - t0, "requests": []}
    try:
        while not os.path.exists(os.path.join(out_dir, "done")) and time.time() < schedule["deadline_unix"]:
            t1 = time.time()
            result = generator.generate(sampling_params_kwargs=dict(
                prompt="a red car on the beach at sunset", height=args.height, width=args.width, num_frames=1,
                num_inference_steps=args.steps_per_request, seed=0, save_output=False))
            result = result[0] if isinstance(result, list) else result
            run["requests"].append({"wall_s": time.time() - t1, "ok": result is not None,
                                    "peak_memory_mb": getattr(result, "peak_memory_mb", None)})
            if result is None and args.free_gib is None:
                break  # without a limit a failed request is a harness error, not a result
    except Exception as exc:  # the points measured so far are the result
        run["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        generator.shutdown()
    return run


def summarize(out_dir: str, lists: list[LayerList], plans: dict, choices: dict[str, ListPlacement],
              budgets: dict[str, int], passes: int, plugin_lists: dict | None = None) -> dict:
    records = [json.loads(line) for line in open(os.path.join(out_dir, "points.jsonl"))]
    bandwidth = json.load(open(os.path.join(out_dir, "bandwidth.json")))["h2d_bytes_per_s"]
    norm = normalized_ms(records)
    points: dict[str, dict] = {}
    for r in records:
        if r["index"] not in norm:
            continue
        key = json.dumps(r["lists"], sort_keys=True)
        placement = ListPlacement.from_dict(r["lists"])  # bytes by the current model, not as recorded
        p = points.setdefault(key, {"label": r["label"], "kind": r["kind"], "lists": r["lists"], "ms": [],
                                    "raw_ms": [], "peak_bytes": 0, "reserved_peak_bytes": 0, "non_allocator_bytes": 0,
                                    "streamed_bytes": streamed_bytes(lists, placement),
                                    "resident_bytes": resident_bytes(lists, placement),
                                    "buffer_bytes": buffer_bytes(lists, placement)})
        p["ms"].append(norm[r["index"]])
        p["raw_ms"].append(r["median_ms"])
        for k in ("peak_bytes", "reserved_peak_bytes", "non_allocator_bytes"):
            p[k] = max(p[k], r[k])
    resident_ms = next((statistics.median(p["ms"]) for p in points.values() if p["kind"] == "all-resident"), None)
    rows = []
    for p in points.values():
        placement = ListPlacement.from_dict(p["lists"])
        row = dict(p, step_ms=statistics.median(p["ms"]), n=len(p["ms"]),
                   copy_floor_ms=p["streamed_bytes"] * passes / bandwidth * 1e3,
                   predicted_peak_bytes={b: predicted_peak(lists, plans[b], placement) for b in budgets})
        row["floor_ms"] = max(resident_ms or 0.0, row["copy_floor_ms"])
        row["feasible"] = {b: row["peak_bytes"] <= limit for b, limit in budgets.items()}
        row["feasible_predicted"] = {b: row["predicted_peak_bytes"][b] <= limit for b, limit in budgets.items()}
        rows.append(row)
    rows.sort(key=lambda r: r["step_ms"])
    between = max((r.get("between_peak_bytes", 0) for r in records), default=0)
    return {"h2d_bytes_per_s": bandwidth, "all_resident_ms": resident_ms, "passes_per_step": passes,
            "outside_denoise_reserved_peak_bytes": between, "per_budget": {
                b: _budget_summary(rows, b, choices[b], plugin_lists) for b in budgets}, "points": rows,
            "blocks_measured": len(records)}


def _budget_summary(rows: list[dict], budget: str, choice: ListPlacement, plugin_lists: dict | None = None) -> dict:
    def brief(r):
        return None if r is None else {k: r[k] for k in ("label", "lists", "step_ms", "floor_ms", "copy_floor_ms",
                                                         "peak_bytes", "n")} | {
            "predicted_peak_bytes": r["predicted_peak_bytes"][budget]}

    fits = [r for r in rows if r["feasible"][budget]]
    both = [r for r in fits if r["feasible_predicted"][budget]]
    best = fits[0] if fits else None
    planner = next((r for r in rows if r["lists"] == choice.to_dict()), None)
    resident = next((r for r in rows if r["kind"] == "all-resident"), None)
    out = {"best_measured_feasible": brief(best), "best_also_predicted_feasible": brief(both[0] if both else None),
           "planner_choice": brief(planner), "all_resident": brief(resident),
           "all_resident_fits": bool(resident and resident["feasible"][budget])}
    if best and planner:
        out["planner_vs_best"] = planner["step_ms"] / best["step_ms"]
        out["planner_vs_best_floor"] = planner["step_ms"] / best["floor_ms"]
        out["best_vs_its_floor"] = best["step_ms"] / best["floor_ms"]
    # found by its placement: where it is also the reference, the reference's blocks come first
    plugin = next((r for r in rows if r["lists"] == plugin_lists), None) if plugin_lists else None
    if plugin:  # only a sweep given the plugin's cache has these keys
        out.update(plugin_choice=brief(plugin), plugin_fits=plugin["feasible"][budget])
        if best:
            out["plugin_vs_best"] = plugin["step_ms"] / best["step_ms"]
            out["plugin_vs_best_floor"] = plugin["step_ms"] / best["floor_ms"]
    return out


def table(summary: dict, budgets: dict[str, int]) -> str:
    names = list(budgets)
    head = ("| point | resident per list | prefetch | policy | step ms (drift-corrected) | n | peak GiB (measured) | "
            + " | ".join(f"predicted GiB @{b}" for b in names) + " | floor ms | " + " | ".join(f"fits {b}" for b in names) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary["points"]:
        ps = [Placement.from_dict(v) for v in r["lists"].values()]
        lines.append(
            f"| {r['label']} | {'/'.join(str(p.resident_layers) for p in ps)} | "
            f"{'/'.join(str(p.prefetch_layers) for p in ps)} | {ps[0].policy} | {r['step_ms']:.1f} | {r['n']} | "
            f"{r['peak_bytes'] / GiB:.2f} | " + " | ".join(f"{r['predicted_peak_bytes'][b] / GiB:.2f}" for b in names)
            + f" | {r['floor_ms']:.1f} | " + " | ".join(
                ("yes" if r["feasible"][b] else "no") + ("" if r["feasible_predicted"][b] else " (pred. no)")
                for b in names) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str, lists: list[LayerList], plans: dict, budgets: dict[str, int], passes: int,
                  extra: dict) -> dict:
    """`extra` with "plugin_lists" (the plugin's cached choice, ListPlacement.to_dict): its row and
    its ratio to the best point per budget."""
    choices = {b: planned_placement(lists, plans[b]) for b in budgets}
    summary = summarize(out_dir, lists, plans, choices, budgets, passes, extra.get("plugin_lists"))
    summary.update(extra, budgets=budgets, plans={b: {"dit": p["dit"], "predicted": {
        k: v for k, v in p["predicted"].items() if k != "per_gpu"}} for b, p in plans.items()})
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table(summary, budgets))
    return summary


def resummarize(out_dir: str, summary_path: str) -> None:
    """Rebuild summary.json and table.md of a finished sweep from its points.jsonl (the code's
    current byte model), with the plans, budgets and run record its old summary holds."""
    old = json.load(open(summary_path))
    lists = [LayerList(k, tuple(v)) for k, v in json.load(open(os.path.join(out_dir, "bandwidth.json")))["lists"].items()]
    extra = {k: old[k] for k in ("run", "argv", "seconds", "plugin_lists") if k in old}
    write_summary(out_dir, lists, old["plans"], old["budgets"], old.get("passes_per_step", 1), extra)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", default=None, help="the model folder (required unless --resummarize)")
    ap.add_argument("--model-id", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budgets", default="16GiB,24GiB", help="SGLANG_AUTOPERF_VRAM_BUDGET values, comma-separated")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--plan-steps", type=int, default=10, help="steps of the request the planner plans for")
    ap.add_argument("--steps-per-request", type=int, default=30)
    ap.add_argument("--grid", type=int, default=6, help="resident counts per list in the grid")
    ap.add_argument("--passes", type=int, default=None, help="DiT forward passes per step (default: the "
                    "planner's, from the model's sampling defaults; FLUX.1-dev: 1, no CFG)")
    ap.add_argument("--time-budget", type=float, default=420, help="seconds for the whole script")
    ap.add_argument("--finish-s", type=float, default=40, help="of those, kept for the request in flight at the "
                    "deadline, the shutdown and the summary (FLUX.1-dev: 30 steps a request)")
    ap.add_argument("--server-args", default="{}")
    ap.add_argument("--focus", default=None, help="JSON file of points ({label, lists}) to measure instead of the "
                    "grid and neighbours (all-resident and the planner's choices are kept)")
    ap.add_argument("--free-gib", type=float, default=None, help="run the sglang process beside a ballast that "
                    "leaves only this much of the card free (benchmarks/ballast.py): which points really fit")
    ap.add_argument("--reference-every", type=int, default=3, help="a reference block before every N points")
    ap.add_argument("--repeat", type=int, default=3, help="with --focus: blocks per point, spread over the run")
    ap.add_argument("--plugin-cache", default=None, help="the plugin's tuning cache folder (SGLANG_AUTOPERF_CACHE_DIR "
                    "of a run that calibrated): its choice and neighbours are measured first, with its ratio to the best")
    ap.add_argument("--plans", default=None, help="JSON {budget: `sglang_autoperf.cli plan --json`} written "
                    "beforehand; budgets missing there are planned now")
    ap.add_argument("--resummarize", action="store_true", help="rebuild summary.json and table.md in --out from its "
                    "points.jsonl and old summary.json (nothing is run)")
    return ap


def main() -> int:
    ap = parser()
    args = ap.parse_args()
    if args.resummarize:
        resummarize(args.out, os.path.join(args.out, "summary.json"))
        return 0
    if not args.model_path:
        ap.error("--model-path is required")
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    for stale in ("points.jsonl", "done", "worker.log"):
        if os.path.exists(os.path.join(args.out, stale)):
            os.remove(os.path.join(args.out, stale))
    lists, _ = layer_lists(args.model_path, args.model_id)
    names = [b.strip() for b in args.budgets.split(",") if b.strip()]
    plans = load_plans(args.plans, names) if args.plans else {}
    plans.update({b: planner_choice(args.model_path, b, args.width, args.height, args.plan_steps, args.model_id)
                  for b in names if b not in plans})
    budgets = {b: parse_vram_budget(b, free_bytes=plans[b]["predicted"]["budget_bytes"] or 1) for b in names}
    choices = {b: planned_placement(lists, plans[b]) for b in names}
    plugin = cached_choice(args.plugin_cache, lists) if args.plugin_cache else None
    if args.plugin_cache and plugin is None:
        print(f"[sweep] no calibration in {args.plugin_cache}: the plugin's choice is not measured", flush=True)
    points = schedule_points(lists, choices, args.grid, plugin)
    if args.focus:
        # beside a ballast, everything resident cannot fit: only the planner's choices are kept
        points = focus_points(points, args.focus, args.repeat, ("planner",) if args.free_gib else ("all-resident", "planner"))
    schedule = {"reference": choices[names[0]].to_dict(), "points": points, "budgets": budgets,
                # the rest of the last request runs fast: everything resident, where no limit is set
                "park": points[0]["lists"] if points[0]["kind"] == "all-resident" else None,
                "neighbour_round": not args.focus, "reference_every": args.reference_every,
                "deadline_unix": t0 + args.time_budget - args.finish_s, "trace_meta": {
                    "workload": f"{args.width}x{args.height}, 1 frame", "model": os.path.basename(args.model_path)}}
    print(f"[sweep] {len(points)} points planned; planner: " + "; ".join(f"{b}: {c.label()}" for b, c in choices.items())
          + (f"; plugin: {plugin.label()}" if plugin else ""), flush=True)
    run = run_sweep(args, schedule, args.out)
    passes = args.passes or plans[names[0]].get("workload", {}).get("cfg_passes") or 1
    extra = {"run": run, "argv": sys.argv[1:], "seconds": time.time() - t0}
    summary = write_summary(args.out, lists, plans, budgets, passes,
                            extra | ({"plugin_lists": plugin.to_dict()} if plugin else {}))
    for b in names:
        print(f"[sweep] {b}: " + json.dumps(summary["per_budget"][b]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
