"""In-process placement sweep: load the model once in one sglang process and measure many
placements per layer list, a few steps each, interleaved with a fixed reference placement so
that drift of the card cancels (issue 17, item 5).

    python3 benchmarks/inprocess_sweep.py --model-path /tmp/models/FLUX.1-dev-random --model-id FLUX.1-dev \
        --budgets 16GiB,24GiB --out /tmp/sweep [--width 1024 --height 1024 --time-budget 420]

1. The planner's start choice for each budget (`sglang_autoperf.cli plan --json`, the live GPU,
   before the model loads) and its memory terms.
2. A schedule: a grid of resident counts per list (prefetch 2, strided), everything resident,
   each planner choice and its neighbours, a few points traced by the overlap monitor.
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


def planner_choice(model_path: str, budget: str, width: int, height: int, steps: int) -> dict:
    """The plan the plugin would start from under `budget` (its CLI, on the live GPU)."""
    cmd = [sys.executable, "-m", "sglang_autoperf.cli", "plan", "--model-path", model_path, "--vram-budget", budget,
           "--width", str(width), "--height", str(height), "--steps", str(steps), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    start = out.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"plan for {budget} printed no JSON: {out.stderr[-400:]}")
    return json.loads(out.stdout[start:])


def layer_lists(model_path: str) -> tuple[list[LayerList], int]:
    from sglang_autoperf.probe.model import probe_model

    dit = probe_model(model_path).dit
    return [LayerList(list_key("transformer", g.name), tuple(g.block_bytes)) for g in dit.block_groups], dit.non_block_bytes


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


def schedule_points(lists: list[LayerList], choices: dict[str, ListPlacement], grid: int) -> list[dict]:
    """Planner choices and neighbours first (they matter most if time runs out), then the grid."""
    points, seen = [], set()

    def add(p: dict) -> None:
        key = json.dumps(p["lists"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            points.append(p)

    everything = ListPlacement(tuple((ll.key, Placement(ll.count, 1, "strided")) for ll in lists))
    add(_point("all-resident", everything, "all-resident", trace=True))
    for name, choice in choices.items():
        add(_point(f"planner-{name}", choice, "planner", trace=True))
        for ll in lists:
            p = choice.get(ll.key)
            for r in (p.resident_layers - 2, p.resident_layers - 1, p.resident_layers + 1, p.resident_layers + 2):
                if 0 <= r <= ll.count:
                    add(_point(f"planner-{name} {ll.key.rsplit('.', 1)[-1]} r{r}",
                               choice.with_list(ll.key, Placement(r, p.prefetch_layers, p.policy)), "planner-near"))
        first = choice.lists[0][1]
        for f in (first.prefetch_layers - 1, first.prefetch_layers + 1, first.prefetch_layers + 2):
            if f >= 1:
                add(_point(f"planner-{name} prefetch {f}", ListPlacement(tuple(
                    (k, Placement(p.resident_layers, f, p.policy)) for k, p in choice.lists)), "planner-near"))
        other = "leading" if first.policy == "strided" else "strided"
        add(_point(f"planner-{name} {other}", ListPlacement(tuple(
            (k, Placement(p.resident_layers, p.prefetch_layers, other)) for k, p in choice.lists)), "planner-near"))
    first, *rest = lists
    add(_point("lowest-compute-per-byte list resident", ListPlacement(
        ((first.key, Placement(first.count, 2, "strided")),) + tuple((ll.key, Placement(0, 4, "strided")) for ll in rest)),
        "grid", trace=True))
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


def run_sweep(args, schedule: dict, out_dir: str) -> dict:
    """One sglang process: requests until the worker plugin says the schedule is done."""
    path = os.path.join(out_dir, "schedule.json")
    with open(path, "w") as f:
        json.dump(schedule, f, indent=1)
    os.environ[SCHEDULE_ENV] = path
    os.environ[OUT_ENV] = out_dir
    os.environ["PYTHONPATH"] = os.pathsep.join([SUPPORT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ.pop("SGLANG_AUTOPERF", None)  # the sweep sets placements itself
    from sglang.multimodal_gen import DiffGenerator

    server_args = {"num_gpus": 1, "attention_backend": "torch_sdpa", "dit_layerwise_offload": True,
                   "dit_layerwise_resident_layers": 0, "dit_offload_prefetch_size": 2,
                   "dit_layerwise_residency_policy": "strided", **json.loads(args.server_args)}
    if args.model_id:
        server_args["model_id"] = args.model_id
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
              budgets: dict[str, int], passes: int) -> dict:
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
                b: _budget_summary(rows, b, choices[b]) for b in budgets}, "points": rows,
            "blocks_measured": len(records)}


def _budget_summary(rows: list[dict], budget: str, choice: ListPlacement) -> dict:
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
    choices = {b: planned_placement(lists, plans[b]) for b in budgets}
    summary = summarize(out_dir, lists, plans, choices, budgets, passes)
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
    extra = {k: old[k] for k in ("run", "argv", "seconds") if k in old}
    write_summary(out_dir, lists, old["plans"], old["budgets"], old.get("passes_per_step", 1), extra)


def main() -> int:
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
    ap.add_argument("--passes", type=int, default=1, help="DiT forward passes per step (FLUX.1-dev: 1, no CFG)")
    ap.add_argument("--time-budget", type=float, default=420, help="seconds for the whole script")
    ap.add_argument("--server-args", default="{}")
    ap.add_argument("--focus", default=None, help="JSON file of points ({label, lists}) to measure instead of the "
                    "grid and neighbours (all-resident and the planner's choices are kept)")
    ap.add_argument("--free-gib", type=float, default=None, help="run the sglang process beside a ballast that "
                    "leaves only this much of the card free (benchmarks/ballast.py): which points really fit")
    ap.add_argument("--reference-every", type=int, default=3, help="a reference block before every N points")
    ap.add_argument("--repeat", type=int, default=3, help="with --focus: blocks per point, spread over the run")
    ap.add_argument("--resummarize", action="store_true", help="rebuild summary.json and table.md in --out from its "
                    "points.jsonl and old summary.json (nothing is run)")
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
    lists, _ = layer_lists(args.model_path)
    names = [b.strip() for b in args.budgets.split(",") if b.strip()]
    plans = {b: planner_choice(args.model_path, b, args.width, args.height, args.plan_steps) for b in names}
    budgets = {b: parse_vram_budget(b, free_bytes=plans[b]["predicted"]["budget_bytes"] or 1) for b in names}
    choices = {b: planned_placement(lists, plans[b]) for b in names}
    points = schedule_points(lists, choices, args.grid)
    if args.focus:
        # beside a ballast, everything resident cannot fit: only the planner's choices are kept
        points = focus_points(points, args.focus, args.repeat, ("planner",) if args.free_gib else ("all-resident", "planner"))
    schedule = {"reference": choices[names[0]].to_dict(), "points": points, "budgets": budgets,
                # the rest of the last request runs fast: everything resident, where no limit is set
                "park": points[0]["lists"] if points[0]["kind"] == "all-resident" else None,
                "neighbour_round": not args.focus, "reference_every": args.reference_every,
                "deadline_unix": t0 + args.time_budget - 40, "trace_meta": {
                    "workload": f"{args.width}x{args.height}, 1 frame", "model": os.path.basename(args.model_path)}}
    print(f"[sweep] {len(points)} points planned; planner: " + "; ".join(f"{b}: {c.label()}" for b, c in choices.items()),
          flush=True)
    run = run_sweep(args, schedule, args.out)
    summary = write_summary(args.out, lists, plans, budgets, args.passes,
                            {"run": run, "argv": sys.argv[1:], "seconds": time.time() - t0})
    for b in names:
        print(f"[sweep] {b}: " + json.dumps(summary["per_budget"][b]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
