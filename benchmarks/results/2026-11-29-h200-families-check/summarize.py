"""summary.json of this page from raw.tar.gz (four device calls; see README.md):
    python3 summarize.py   # extracts raw.tar.gz into a temporary folder, writes summary.json
"""
import glob
import json
import os
import re
import statistics
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
GiB = 2**30


def lines(path: str, pattern: str) -> list[str]:
    return [l.rstrip() for l in open(path, errors="replace") if re.search(pattern, l)] if os.path.exists(path) else []


def e2e(d: str) -> dict:
    """The plugin's own `sglang generate` runs (cold, warm) beside the ballast."""
    out = {"ballast": json.load(open(f"{d}/ballast.json"))}
    for arm in ("cold", "warm"):
        log = f"{d}/{arm}.log"
        if not os.path.exists(log):
            continue
        step = lines(log, r"average time per step")
        out[arm] = {"sglang_avg_step_s": float(step[-1].split()[-2]) if step else None,
                    "oom_lines": len(lines(log, r"out of memory|OutOfMemoryError")),
                    "autoperf": lines(f"{d}/autoperf_lines_{arm}.txt",
                                      r"calibration of|kept compressed|kept raw|memory at|needs more memory|applied|cache hit|candidate")}
    out["cached"] = [json.load(open(p))["result"] for p in glob.glob(f"{d}/cache/*.json")]
    return out


def compress_rows(d: str) -> dict:
    s = json.load(open(f"{d}/summary.json"))
    rows = [{"point": r["point"], "compressed": r["compressed"], "lists": r["lists"], "step_ms": r["step_ms"],
             "blocks_ms": r["ms"], "peak_gib_card": round(r["peak_bytes"] / GiB, 3),
             "paired_speedup": r.get("paired_speedup")} for r in s["rows"]]
    return {"rows": rows, "per_budget": s["per_budget"], "ballast": s["run"].get("ballast"),
            "outputs_bit_identical": s["outputs_bit_identical"], "compression": s["compression"]["report"]}


def ratio(rows: list[dict]) -> dict:
    plugin = next(r for r in rows if r["point"].startswith("plugin") and r["compressed"])
    best = min(rows, key=lambda r: r["step_ms"])
    return {"plugin": (plugin["point"], "compressed", plugin["step_ms"]),
            "best": (best["point"], "compressed" if best["compressed"] else "raw", best["step_ms"]),
            "plugin_over_best": plugin["step_ms"] / best["step_ms"],
            "plugin_over_best_range": [min(plugin["blocks_ms"]) / max(best["blocks_ms"]),
                                       max(plugin["blocks_ms"]) / min(best["blocks_ms"])]}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(os.path.join(HERE, "raw.tar.gz")) as t:
            t.extractall(tmp)
        for call in ("call1", "call2", "call3", "call4"):
            for a in glob.glob(f"{tmp}/{call}/*.tar.gz"):
                with tarfile.open(a) as t:
                    t.extractall(f"{tmp}/{call}")
        klein_limit = json.load(open(f"{tmp}/call1/klein-limit/summary.json"))
        summary = {
            "card": "one NVIDIA H200 (150,109,880,320 B), real sglang 0.5.23 through the GPU sandbox kit",
            "call1_klein_check": {"klein": e2e(f"{tmp}/call1/klein-e2e"), "zimage": e2e(f"{tmp}/call1/zimage-e2e"),
                                  "klein_raw_sweep_points": [
                                      {k: p.get(k) for k in ("label", "lists", "step_ms", "n", "peak_bytes")}
                                      for p in klein_limit["points"]]},
            "call2_klein": {"e2e": e2e(f"{tmp}/call2/klein-e2e"), "sweep": compress_rows(f"{tmp}/call2/klein-compress")},
            "call3_zimage": {"e2e": e2e(f"{tmp}/call3/zimage-e2e"), "sweep": compress_rows(f"{tmp}/call3/zimage-compress")},
            "call4_flux1_16gib": {"e2e": e2e(f"{tmp}/call4/lists16-e2e")},
        }
        summary["issue16"] = {"klein_8gib": ratio(summary["call2_klein"]["sweep"]["rows"]),
                              "zimage_10gib": ratio([r for r in summary["call3_zimage"]["sweep"]["rows"]])}
    with open(os.path.join(HERE, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps(summary["issue16"], indent=1))


if __name__ == "__main__":
    main()
