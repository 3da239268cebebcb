"""The layout benchmark's helper (issue 20): which arms to run, the plugin's choice, and the table.

    python3 benchmarks/layout_table.py prepare MODEL N OUTDIR [--attention-backend B] [--gpu-snapshot FILE]
            [--width W --height H --frames F --steps S]
        from one probe of the model and the GPUs (live NVML, or a snapshot): OUTDIR/arms.tsv (one
        line an arm: NAME<TAB>LABEL<TAB>AUTOPERF 0/1<TAB>server-args JSON; every valid layout by
        plan/layout.py's own rules, sglang's default, the plugin free and pinned to its choice),
        OUTDIR/predicted.json ({label: predicted step ms}) and OUTDIR/plan.json (the plugin's plan)
    python3 benchmarks/layout_table.py table ARMS_JSONL... [--predicted JSON] [--svg FILE] [--winner FILE]
        the results page: per arm the median over processes of each process's steady step median,
        the spread (min..max over processes), the ratio to the best layout, whether it is inside
        the best's spread; bit-identity of outputs (same layout, with and without the plugin);
        the measured winner as the tuning cache would key it

An arm line in ARMS_JSONL is gen_api.py's record plus {"arm", "round", "label", "autoperf", "rc", "shape"}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys


def layout_args(lay, num_gpus: int, attention_backend: str | None) -> dict:
    """What a user types for this layout, as ServerArgs fields (gen_api.py pins every one):
    --cfg-parallel-size, --ulysses-degree, --ring-degree, --kv-gather-degree, --use-fsdp-inference."""
    args = {"num_gpus": num_gpus, "cfg_parallel_degree": lay.cfg, "ulysses_degree": lay.ulysses,
            "ring_degree": lay.ring, "kv_gather_degree": lay.kv_gather, "use_fsdp_inference": lay.fsdp}
    if attention_backend:
        args["attention_backend"] = attention_backend
    return args


def prepare(model_path: str, num_gpus: int, attention_backend: str | None, snapshot: str | None,
            width: int, height: int, frames: int, steps: int) -> dict:
    """Everything the benchmark needs from the planner, from one probe: the arms, the predicted step of
    each layout, and the plugin's plan (make_plan with the flags the arms pin, as the plugin plans)."""
    from sglang_autoperf.plan import layout as L
    from sglang_autoperf.plan.planner import make_plan
    from sglang_autoperf.probe.gpu import probe_gpus, profile_from_snapshot
    from sglang_autoperf.probe.model import probe_model
    from sglang_autoperf.probe.workload import workload_for

    gpu = profile_from_snapshot(snapshot) if snapshot else probe_gpus()
    m = probe_model(model_path)
    wl = dataclasses.replace(workload_for(m, width, height, num_frames=frames), steps=steps)
    runs_cfg = wl.cfg_passes >= 2
    pinned = {"attention_backend": attention_backend} if attention_backend else {}
    plan = make_plan(gpu, m, wl, pinned, {"num_gpus": num_gpus, **pinned}, None, num_gpus=num_gpus)
    chosen = L.layout_from_settings(plan.settings, num_gpus, runs_cfg)
    devs = gpu.devices[:num_gpus]
    d = min(devs, key=lambda x: x.memory_free_bytes)
    costs = L.choose_layout(m, wl, devs, num_gpus, pinned, pinned, d.memory_free_bytes,
                            d.bf16_dense_flops or 989e12, d.h2d_bytes_per_s or 25e9, runs_cfg).costs
    free = {"num_gpus": num_gpus, **pinned}
    arms = [(c.layout.label, c.layout.label, 0, layout_args(c.layout, num_gpus, attention_backend)) for c in costs]
    arms += [("sglang-default", "default", 0, free), ("plugin", chosen.label, 1, free),
             ("plugin-pinned", chosen.label, 1, layout_args(chosen, num_gpus, attention_backend))]
    left_out = {lay.label: L.layout_problem(lay, num_gpus, m.dit.num_heads, runs_cfg, attention_backend)
                for lay in L.enumerate_layouts(num_gpus)}
    return {"arms": arms, "predicted": {c.layout.label: round(c.step_s * 1e3, 1) for c in costs},
            "plan": {**plan.to_dict(), "layout": chosen.label},
            "left_out": {k: v for k, v in left_out.items() if v is not None}}


def process_step_ms(record: dict) -> float | None:
    """One process's number: the steady median of its last request that finished (the first
    request of a process carries the warmup's autotuning)."""
    ok = [r for r in record.get("requests", []) if r.get("status") == "ok" and r.get("steady_median_ms")]
    return float(ok[-1]["steady_median_ms"]) if ok else None


def last_sha(record: dict) -> str | None:
    ok = [r for r in record.get("requests", []) if r.get("status") == "ok"]
    return ok[-1].get("sha256") if ok else None


def summarise(records: list[dict]) -> dict:
    """arm -> {label, autoperf, steps (one per process), median, lo, hi, shas, failures}"""
    arms: dict[str, dict] = {}
    for rec in records:
        a = arms.setdefault(rec["arm"], {"label": rec.get("label"), "autoperf": rec.get("autoperf"),
                                          "steps": [], "shas": [], "failures": []})
        step = process_step_ms(rec)
        if step is None:
            a["failures"].append(rec.get("error") or f"rc {rec.get('rc')}")
        else:
            a["steps"].append(step)
            a["shas"].append(last_sha(rec))
    for a in arms.values():
        s = a["steps"]
        a.update(median=statistics.median(s) if s else None, lo=min(s) if s else None, hi=max(s) if s else None)
    return arms


def lossless_pairs(arms: dict) -> list[tuple[str, str, bool]]:
    """(plugin arm, sglang arm, bit-identical) for every plugin arm and the sglang arm of its layout."""
    out = []
    for name, a in arms.items():
        if not a["autoperf"] or not a["shas"]:
            continue
        twin = next((n for n, b in arms.items() if not b["autoperf"] and b["label"] == a["label"] and b["shas"]
                     and n != "sglang-default"), None)
        if twin:
            out.append((name, twin, set(a["shas"]) == set(arms[twin]["shas"]) and len(set(a["shas"])) == 1))
    return out


def markdown(arms: dict, predicted: dict[str, float] | None = None) -> tuple[str, str | None]:
    """The table, and the best layout's arm name (the fastest sglang-alone layout arm)."""
    layout_arms = {n: a for n, a in arms.items() if not a["autoperf"] and a["median"] is not None}
    best = min(layout_arms, key=lambda n: layout_arms[n]["median"]) if layout_arms else None
    ceiling = arms[best]["hi"] if best else None
    rows = ["| arm | layout | plugin | processes | step ms (median) | spread (min..max) | vs best | inside best's spread |"
            + (" predicted ms |" if predicted else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if predicted else "")]
    for name, a in sorted(arms.items(), key=lambda kv: (kv[1]["median"] is None, kv[1]["median"] or 0)):
        if a["median"] is None:
            rows.append(f"| {name} | {a['label']} | {'on' if a['autoperf'] else 'off'} | 0 | failed: "
                        f"{'; '.join(a['failures'])[:120]} | | | |" + (" |" if predicted else ""))
            continue
        ratio = a["median"] / arms[best]["median"] if best else float("nan")
        inside = "yes" if ceiling is not None and a["median"] <= ceiling else "no"
        pred = predicted.get(a["label"]) if predicted else None
        rows.append(f"| {name} | {a['label']} | {'on' if a['autoperf'] else 'off'} | {len(a['steps'])} | "
                    f"{a['median']:.1f} | {a['lo']:.1f}..{a['hi']:.1f} | {ratio:.3f} | {inside} |"
                    + (f" {pred:.1f} |" if pred is not None else (" |" if predicted else "")))
    lines = rows + [""]
    for plugin, twin, same in lossless_pairs(arms):
        lines.append(f"- lossless: {plugin} vs {twin} (same layout): {'bit-identical' if same else 'OUTPUTS DIFFER'}")
    for name, a in arms.items():
        if a["shas"] and len(set(a["shas"])) > 1:
            lines.append(f"- {name}: its own processes disagree ({len(set(a['shas']))} different outputs)")
    if best:
        lines.append(f"- best layout: {best} ({arms[best]['label']}), spread {arms[best]['lo']:.1f}.."
                     f"{arms[best]['hi']:.1f} ms")
    for name in ("plugin", "sglang-default"):
        if name in arms and arms[name]["median"] is not None and best:
            lines.append(f"- {name}: {arms[name]['median']:.1f} ms, "
                         f"{'inside' if arms[name]['median'] <= ceiling else 'OUTSIDE'} the best's spread")
    return "\n".join(lines), best


def svg_bars(arms: dict) -> str:
    """A bar per arm (median) with its min..max whisker; plain SVG, no plotting library needed."""
    done = sorted(((n, a) for n, a in arms.items() if a["median"] is not None), key=lambda kv: kv[1]["median"])
    if not done:
        return "<svg xmlns='http://www.w3.org/2000/svg'/>"
    top = max(a["hi"] for _, a in done) * 1.1
    width, bar, left = 640, 22, 190
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{bar * len(done) + 30}' "
           "font-family='sans-serif' font-size='11'>"]
    for i, (name, a) in enumerate(done):
        y, scale = 10 + i * bar, (width - left - 60) / top
        color = "#d62728" if a["autoperf"] else "#1f77b4"
        out += [f"<text x='4' y='{y + 14}'>{name}</text>",
                f"<rect x='{left}' y='{y + 3}' width='{a['median'] * scale:.1f}' height='{bar - 8}' fill='{color}'/>",
                f"<line x1='{left + a['lo'] * scale:.1f}' x2='{left + a['hi'] * scale:.1f}' y1='{y + 11}' "
                f"y2='{y + 11}' stroke='black'/>",
                f"<text x='{left + a['hi'] * scale + 4:.1f}' y='{y + 14}'>{a['median']:.0f} ms</text>"]
    return "\n".join(out + ["</svg>"])


def winner_record(records: list[dict], arms: dict, best: str | None) -> dict | None:
    """What a tuning cache entry for the measured layout needs (issue 20's key: model, GPU model,
    count, link, shape bucket); the cache plumbing that stores it is a follow-up."""
    if best is None:
        return None
    rec = next(r for r in records if r["arm"] == best)
    argv = rec.get("argv", [])
    model_path = argv[argv.index("--model-path") + 1] if "--model-path" in argv else None
    return {"layout": arms[best]["label"], "median_ms": arms[best]["median"], "spread_ms": [arms[best]["lo"], arms[best]["hi"]],
            "card": rec.get("card"), "num_gpus": rec.get("server_args", {}).get("num_gpus"),
            "link": rec.get("link"), "model_path": model_path, "shape": rec.get("shape")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("model"), p.add_argument("n", type=int), p.add_argument("outdir")
    p.add_argument("--attention-backend"), p.add_argument("--gpu-snapshot"), p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480), p.add_argument("--frames", type=int, default=81)
    p.add_argument("--steps", type=int, default=6)
    t = sub.add_parser("table")
    t.add_argument("arms", nargs="+", help="arms.jsonl of one or more calls"), t.add_argument("--predicted")
    t.add_argument("--svg"), t.add_argument("--winner")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        got = prepare(args.model, args.n, args.attention_backend, args.gpu_snapshot, args.width, args.height,
                      args.frames, args.steps)
        with open(os.path.join(args.outdir, "arms.tsv"), "w") as f:
            f.writelines(f"{n}\t{label}\t{ap}\t{json.dumps(sa)}\n" for n, label, ap, sa in got["arms"])
        for name in ("predicted", "plan"):
            with open(os.path.join(args.outdir, f"{name}.json"), "w") as f:
                json.dump(got[name], f, indent=1, default=str)
        for label, why in got["left_out"].items():
            print(f"left out {label}: {why}")
        print(f"plugin's layout {got['plan']['layout']}; predicted ms {json.dumps(got['predicted'])}")
        return 0
    records = []
    for path in args.arms:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    predicted = None
    if args.predicted:
        with open(args.predicted) as f:
            predicted = {k: float(v) for k, v in json.load(f).items()}
    arms = summarise(records)
    text, best = markdown(arms, predicted)
    print(text)
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg_bars(arms))
    if args.winner:
        with open(args.winner, "w") as f:
            json.dump(winner_record(records, arms, best), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
