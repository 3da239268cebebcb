"""Compressed vs raw layer streaming in one sglang process (issue 18): the in-process sweep's worker
plugin (benchmarks/sweep_support) with `"compress": true` holds every offloaded layer both raw and
in the codec's bytes, and each block of the schedule streams one or the other at its placement,
interleaved (raw, compressed, raw, ...) with a fixed reference so that drift of the card cancels.
After the schedule, three requests at the parking placement with the same seed, raw / compressed /
raw, give the output digests (bit-identical outputs; the third tells nondeterminism apart).

    python3 benchmarks/compress_sweep.py --model-path /tmp/models/FLUX.1-dev-random --model-id FLUX.1-dev \
        --points benchmarks/results/2026-11-29-h200-compress/points.json --out /tmp/compress
    (--free-gib 8: the same beside a ballast that leaves 8 GiB of the card free)

Writes: points.jsonl, compression.json (store ratio, host bytes raw vs compressed, encode time, every
decoded layer checked bit for bit against sglang's raw buffer), digests.json, summary.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "sweep_support"))

from autoperf_sweep import normalized_ms  # noqa: E402

GiB = 1024**3


def schedule_of(points: list[dict], repeat: int, deadline: float, budgets: dict[str, int]) -> dict:
    """Each point raw then compressed (when it asks for both), the pairs repeated `repeat` times."""
    blocks = []
    for r in range(repeat):
        for p in points:
            for compressed in p.get("arms", [False, True]):
                blocks.append({"label": f"{p['label']} {'compressed' if compressed else 'raw'}", "kind": "point",
                               "point": p["label"], "lists": p["lists"], "compressed": compressed, "trace": False,
                               "repeat": r})
    return {"reference": points[0]["lists"], "points": blocks, "budgets": budgets, "compress": True,
            "park": points[0]["lists"], "park_compressed": False, "neighbour_round": False,
            "reference_every": 4, "warm_steps": 1, "measured_steps": 3, "deadline_unix": deadline}


def digest(result) -> str | None:
    samples = getattr(result, "samples", None)
    if samples is None or not hasattr(samples, "detach"):
        return None
    return hashlib.sha256(samples.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8)
                          .numpy().tobytes()).hexdigest()


def run(args, schedule: dict) -> dict:
    from inprocess_sweep import sweep_process_args

    server_args = sweep_process_args(args, schedule, args.out)
    if args.free_gib is None:
        return _requests(args, schedule, server_args)
    from compare import Ballast  # a real limit: only this much of the card is free (ballast process)

    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    with Ballast(args.free_gib, args.out, sys.executable) as ballast:
        out = _requests(args, schedule, server_args)
    return dict(out, ballast=ballast.info)


def _requests(args, schedule: dict, server_args: dict) -> dict:
    from sglang.multimodal_gen import DiffGenerator

    t0 = time.time()
    generator = DiffGenerator.from_pretrained(model_path=args.model_path, **server_args)
    out = {"startup_s": time.time() - t0, "requests": [], "digests": []}

    def request(steps: int):
        result = generator.generate(sampling_params_kwargs=dict(
            prompt="a red car on the beach at sunset", height=args.height, width=args.width, num_frames=1,
            num_inference_steps=steps, seed=0, save_output=False))
        return result[0] if isinstance(result, list) else result

    try:
        while not os.path.exists(os.path.join(args.out, "done")) and time.time() < schedule["deadline_unix"]:
            t1 = time.time()
            out["requests"].append({"ok": request(args.steps_per_request) is not None, "wall_s": time.time() - t1})
        for arm in ("0", "1", "0"):  # raw, compressed, raw: same placement (park), same seed
            if time.time() > schedule["deadline_unix"] + 30:
                break
            with open(os.path.join(args.out, "compressed_switch"), "w") as f:
                f.write(arm)
            out["digests"].append({"compressed": arm == "1", "sha256": digest(request(args.digest_steps))})
    except Exception as exc:  # the blocks measured so far are the result
        out["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        generator.shutdown()
    return out


def summarize(out_dir: str, budgets: dict[str, int], run_info: dict) -> dict:
    records = [json.loads(line) for line in open(os.path.join(out_dir, "points.jsonl"))]
    norm = normalized_ms(records)
    rows: dict[tuple[str, bool], dict] = {}
    for r in records:
        if r.get("kind") != "point" or r["index"] not in norm:
            continue
        row = rows.setdefault((r["point"], r["compressed"]), {"point": r["point"], "compressed": r["compressed"],
                                                               "lists": r["lists"], "ms": [], "peak_bytes": 0})
        row["ms"].append(norm[r["index"]])
        row["peak_bytes"] = max(row["peak_bytes"], r["peak_bytes"])
    table = []
    for row in rows.values():
        row["step_ms"] = statistics.median(row["ms"])
        row["fits"] = {b: row["peak_bytes"] <= limit for b, limit in budgets.items()}
        raw = rows.get((row["point"], False))
        if row["compressed"] and raw:
            # per repeat, the compressed block against the raw block just before it (paired)
            row["paired_speedup"] = statistics.median(a / b for a, b in zip(raw["ms"], row["ms"]))
        table.append(row)
    table.sort(key=lambda r: r["step_ms"])
    per_budget = {}
    for b in budgets:
        fits = [r for r in table if r["fits"][b]]
        best_raw = next((r for r in fits if not r["compressed"]), None)
        best_comp = next((r for r in fits if r["compressed"]), None)
        per_budget[b] = {"best_raw": best_raw and (best_raw["point"], best_raw["step_ms"]),
                         "best_compressed": best_comp and (best_comp["point"], best_comp["step_ms"]),
                         "speedup": best_raw and best_comp and best_raw["step_ms"] / best_comp["step_ms"]}
    digests = run_info.get("digests", [])
    summary = {"rows": table, "per_budget": per_budget, "run": run_info,
               "compression": json.load(open(os.path.join(out_dir, "compression.json"))),
               "bandwidth": json.load(open(os.path.join(out_dir, "bandwidth.json"))),
               "outputs_bit_identical": (len(digests) == 3 and len({d["sha256"] for d in digests}) == 1
                                         and digests[0]["sha256"] is not None)}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--model-id", default=None, help="sglang's --model-id where the folder's name does not resolve")
    ap.add_argument("--free-gib", type=float, default=None, help="run beside a ballast that leaves only this much of "
                    "the card free (benchmarks/ballast.py); peaks are then judged card-wide: a point fits if it ran")
    ap.add_argument("--points", required=True, help="JSON list of {label, lists[, arms]}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budgets", default="16GiB,24GiB", help="limits the measured peaks are judged against")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--steps-per-request", type=int, default=30)
    ap.add_argument("--digest-steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=400)
    args = ap.parse_args()
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    for stale in ("points.jsonl", "done", "worker.log", "compressed_switch"):
        if os.path.exists(os.path.join(args.out, stale)):
            os.remove(os.path.join(args.out, stale))
    budgets = {b.strip(): int(float(b.strip()[:-3]) * GiB) for b in args.budgets.split(",") if b.strip()}
    points = json.load(open(args.points))
    schedule = schedule_of(points, args.repeat, t0 + args.time_budget - 60, budgets)
    print(f"[compress] {len(schedule['points'])} blocks planned", flush=True)
    info = run(args, schedule)
    if args.free_gib is not None and "total_gib" in info.get("ballast", {}):  # card-wide peaks beside the ballast
        budgets = {f"{args.free_gib:g}GiB free": int((info["ballast"]["total_gib"] + 0.005) * GiB)}
    summary = summarize(args.out, budgets, dict(info, seconds=time.time() - t0))
    print("[compress] " + json.dumps({"per_budget": summary["per_budget"],
                                      "outputs_bit_identical": summary["outputs_bit_identical"],
                                      "compression": {k: v for k, v in summary["compression"].items()
                                                      if k != "mismatched_layers"}}), flush=True)
    for row in summary["rows"]:
        print(f"[compress] {row['point']:<28} {'C' if row['compressed'] else 'R'} {row['step_ms']:7.1f} ms "
              f"peak {row['peak_bytes'] / GiB:5.2f} GiB speedup {row.get('paired_speedup') or 0:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
