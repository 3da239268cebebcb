"""The overlap monitor's own cost, from one process run with SGLANG_AUTOPERF_TRACE_EVERY=2.

Traced and untraced steps alternate inside each request (the traced phase shifts by one from one
request to the next), so both kinds of step share the request, the placement and whatever clock
regime the GPU is in. A sampled step attaches the monitor's hooks and removes them after, so an
untraced step runs none of our per-layer code: overhead = a traced step (hooks + events) against
the mean of its untraced neighbours.

    python3 benchmarks/monitor_overhead.py RUN_JSON TRACE_DIR   (RUN_JSON from gen_api.py)

Prints one JSON object: per request the traced/untraced step medians and the paired ratios, and
over all requests the median paired overhead in percent; beside it the monitor's own host time per
traced step as each trace clocked it (`monitor_host_ms`: the direct part of the overhead; the paired
ratio also holds what no clock of ours sees, e.g. torch calling the extra hooks).
"""
from __future__ import annotations

import glob
import json
import os
import re
import statistics
import sys


def traced_steps_per_request(trace_dir: str) -> list[set[int]]:
    """Traced step indices of each non-warmup request, in request order (rank 0)."""
    return [set(steps) for steps in step_values_per_request(trace_dir, "monitor_host_ms")]


def step_values_per_request(trace_dir: str, field: str) -> list[dict[int, float]]:
    """Per non-warmup request, in request order (rank 0): traced step -> that step's `field`
    (e.g. `monitor_host_ms`, the monitor's own host time)."""
    found = []
    for path in glob.glob(os.path.join(trace_dir, "trace-rank0-req*-pid*.json")):
        number = int(re.search(r"-req(\d+)-", os.path.basename(path)).group(1))
        with open(path) as f:
            rec = json.load(f)
        if rec.get("meta", {}).get("warmup"):
            continue
        found.append((number, {int(s["step"]): float(s.get(field, 0.0)) for s in rec["steps"]}))
    return [steps for _, steps in sorted(found)]


def paired_overhead(steps_ms: list[float], traced: set[int]) -> dict:
    pairs = []
    for t in sorted(traced):
        neighbours = [steps_ms[i] for i in (t - 1, t + 1) if 0 < i < len(steps_ms) and i not in traced]
        if neighbours and t < len(steps_ms):
            pairs.append(steps_ms[t] / statistics.mean(neighbours) - 1.0)
    traced_ms = [steps_ms[i] for i in sorted(traced) if i < len(steps_ms)]
    untraced_ms = [v for i, v in enumerate(steps_ms) if i > 0 and i not in traced]
    return {
        "traced_steps": sorted(traced),
        "traced_median_ms": statistics.median(traced_ms) if traced_ms else None,
        "untraced_median_ms": statistics.median(untraced_ms) if untraced_ms else None,
        "paired_overhead_pct": [round(100 * p, 3) for p in pairs],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        run = json.load(f)
    host = step_values_per_request(argv[1], "monitor_host_ms")
    traced = [set(h) for h in host]
    requests = [r for r in run["requests"] if r.get("status") == "ok"]
    if len(traced) != len(requests):
        print(json.dumps({"error": f"{len(traced)} traced requests vs {len(requests)} served"}))
        return 1
    per_request = [paired_overhead(r["steps_ms"], t) for r, t in zip(requests, traced)]
    pairs = [p for r in per_request for p in r["paired_overhead_pct"]]
    host_ms = [ms for h in host for ms in h.values()]
    record_ms = [ms for h in step_values_per_request(argv[1], "monitor_record_ms") for ms in h.values()]
    untraced = [r["untraced_median_ms"] for r in per_request if r["untraced_median_ms"]]
    print(json.dumps({
        "card": run.get("card"),
        "requests": per_request,
        "pairs": len(pairs),
        "median_paired_overhead_pct": statistics.median(pairs) if pairs else None,
        "mean_paired_overhead_pct": statistics.mean(pairs) if pairs else None,
        "median_monitor_host_ms": statistics.median(host_ms) if host_ms else None,
        "median_monitor_host_pct": (100 * statistics.median(host_ms) / statistics.median(untraced)
                                    if host_ms and untraced else None),
        "median_monitor_record_ms": statistics.median(record_ms) if record_ms else None,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
