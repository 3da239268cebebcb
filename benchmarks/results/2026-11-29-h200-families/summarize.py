"""summary.json of this page from the device call's unpacked parts (run_device_call.sh families):

    python3 summarize.py RAW_DIR > summary.json

RAW_DIR holds NAME-e2e/ (logs, perf dumps, ballast.json, memory samples, the plugin's cache) and
NAME-sweep/ (the in-process sweep's summary.json) for NAME in zimage, klein.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

GiB = 1024**3


def arm(d: Path, run: str) -> dict | None:
    """One `sglang generate`: did it finish, its steady step time (steps 2.. of the request; step 0
    pins resident layers and compiles kernels, step 1 still warms), OOM lines, the plugin's lines."""
    log_path = d / f"{run}.log"
    if not log_path.exists():
        return None
    log = log_path.read_text(errors="replace")
    perf_path = d / f"perf-{run}.json"
    out = {"finished": perf_path.exists(), "oom_lines": log.count("out of memory"),
           "sglang_auto_policy": [line.split("] ", 1)[-1][:400] for line in log.splitlines()
                                  if "Auto memory policy" in line or "keeps its DiT resident" in line],
           "autoperf": [line.split("] ", 1)[-1][:400] for line in log.splitlines()
                        if "[autoperf] set " in line or "calibration of" in line or "cache hit" in line
                        or "memory at" in line or "applied the cached" in line],
           "errors": [line[:400] for line in log.splitlines() if "Error" in line and "Warning" not in line][:8]}
    if out["finished"]:
        perf = json.loads(perf_path.read_text())
        steps = [s["duration_ms"] for s in perf["denoise_steps_ms"]]
        out.update(steps_ms=steps, steady_median_ms=statistics.median(steps[2:]) if len(steps) > 2 else None,
                   total_ms=perf.get("total_duration_ms"),
                   peak_reserved_mb=max((c.get("peak_reserved_mb", 0) for c in perf.get("memory_checkpoints", {}).values()),
                                        default=None))
    return out


def e2e(d: Path) -> dict:
    ballast = [json.loads(line.split("[ballast] ", 1)[1]) for line in (d / "ballast.log").read_text().splitlines()
               if line.startswith("[ballast] {")] if (d / "ballast.log").exists() else []
    used = [int(x) for x in (d / "memory_used_mib.txt").read_text().split() if x.isdigit()] \
        if (d / "memory_used_mib.txt").exists() else []
    cache = [json.loads(p.read_text())["result"] for p in sorted((d / "cache").glob("*.json"))] \
        if (d / "cache").exists() else []
    return {"ballasts": ballast, "card_used_peak_mib": max(used, default=None),
            "runs": {run: arm(d, run) for run in ("cold", "defaults", "warm")},
            "cached_choice": [{k: c.get(k) for k in ("placement", "list_placement", "reason", "calibration_s")}
                              for c in cache]}


def sweep(d: Path) -> dict | None:
    path = d / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    keep = ("label", "lists", "step_ms", "n", "peak_bytes", "floor_ms", "feasible")
    return {"h2d_bytes_per_s": s["h2d_bytes_per_s"], "all_resident_ms": s["all_resident_ms"],
            "per_budget": s["per_budget"], "blocks_measured": s["blocks_measured"],
            "points": [{k: p[k] for k in keep} for p in s["points"]], "seconds": s.get("seconds"),
            "run_error": s.get("run", {}).get("error")}


def main(raw: str) -> int:
    root = Path(raw)
    card = next((json.loads(p.read_text()) for p in root.glob("*-sweep/bandwidth.json")), {})
    out = {"card": f"{card.get('card')}, {card.get('total_bytes')} B as CUDA reports it",
           "software": "the GPU sandbox kit: sglang 0.5.23, torch 2.11.0+cu130, attention torch_sdpa",
           "command": "source .gpu-kit/setup_on_gpu.sh; BUDGET_S=540 bash benchmarks/run_device_call.sh families",
           "workload": "1024x1024, 1 image, 8 steps, seed 0, one DiT pass a step (both models' sampling defaults)",
           "families": {name: {"e2e": e2e(root / f"{name}-e2e"), "sweep": sweep(root / f"{name}-sweep")}
                        for name in ("zimage", "klein") if (root / f"{name}-e2e").exists()}}
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
