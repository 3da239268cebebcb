"""Tables and plots from compare.py result folders.

    python3 benchmarks/report.py RESULT_DIR [RESULT_DIR ...] --out REPORT_DIR [--no-plots]

A result folder is any folder holding a compare.py `summary.json` and `runs/*.json` (folders are
searched recursively, so a whole experiment archive can be passed). Writes REPORT_DIR/table.md:
  * one summary table: per case and per autoperf arm, off / on / oracle (best fixed streamed setting:
    sweep points and plugin-off arms that streamed) steady step time, on÷off speed-up (>1: on is
    faster), on vs oracle gap, peak VRAM and status;
  * one detail table per case: every arm with its spread, stage times and the settings it ran with.
and, when matplotlib is importable, PNGs: step time vs resident layers per case (sweep points,
off and on marked), and a per-layer copy-vs-compute timeline for each `trace*.json` found (list of
{layer, copy_start_ms, copy_end_ms, compute_start_ms, compute_end_ms}, or a dict holding such a
list under "layers"/"trace"/"events").
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

GIB_MB = 1024.0  # perf dumps count MiB


# --------------------------------------------------------------------------- loading


def load_case(folder: str) -> dict:
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    runs = []
    for p in sorted(glob.glob(os.path.join(folder, "runs", "*.json"))):
        with open(p) as f:
            runs.append(json.load(f))
    if not runs:  # a summary alone is enough to report
        runs = [dict(r, timings={"steady": r.get("steady"), "denoise_stage_ms": r.get("denoise_stage_ms"),
                                 "total_ms": r.get("total_ms")},
                     vram={"peak_allocated_mb": r.get("peak_allocated_mb")}, arm_kind=r.get("kind"))
                for r in summary.get("arms", [])]
    order = {a["arm"]: i for i, a in enumerate(summary.get("arms", []))}
    runs.sort(key=lambda r: order.get(r["arm"], len(order)))
    traces = sorted(glob.glob(os.path.join(folder, "**", "trace*.json"), recursive=True))
    return {"folder": folder, "summary": summary, "runs": runs, "traces": traces, "label": case_label(folder, summary)}


def case_label(folder: str, summary: dict) -> str:
    label = summary.get("case") or os.path.basename(os.path.normpath(folder))
    free = (summary.get("budget") or {}).get("free_gib_target", (summary.get("budget") or {}).get("free_gib"))
    if free is not None and f"{free:g}g" not in label:
        label += f" ({free:g} GiB free)"
    return label


def find_cases(paths: list[str]) -> list[dict]:
    folders = []
    for p in paths:
        if os.path.isfile(os.path.join(p, "summary.json")):
            folders.append(p)
        folders += sorted(os.path.dirname(s) for s in glob.glob(os.path.join(p, "**", "summary.json"), recursive=True)
                          if os.path.dirname(s) != p.rstrip("/"))
    seen, cases = set(), []
    for f in folders:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            cases.append(load_case(f))
    # the same case measured in several calls: name each by its folder, or rows and plots collide
    labels = [c["label"] for c in cases]
    for c in cases:
        if labels.count(c["label"]) > 1:
            c["label"] = f"{c['label']} ({os.path.basename(os.path.normpath(c['folder']))})"
    return cases


# --------------------------------------------------------------------------- numbers


def median(r: dict | None) -> float | None:
    if not r or r.get("status") != "ok":
        return None
    return ((r.get("timings") or {}).get("steady") or {}).get("median_ms")


def peak_gib(r: dict | None) -> float | None:
    v = ((r or {}).get("vram") or {}).get("peak_allocated_mb")
    return None if v is None else v / GIB_MB


def oracle(runs: list[dict]) -> dict | None:
    """The best fixed streamed setting measured in the case: a sweep point, or a plugin-off arm whose
    read-back settings show the DiT streamed (sglang's own defaults stream under a budget; that
    setting is a point of the same space, so the oracle must not be worse than it)."""
    def streamed(r: dict) -> bool:
        return bool((r.get("settings") or {}).get("layerwise_offload"))
    ok = [r for r in runs if median(r) is not None and not r.get("autoperf")
          and (r.get("arm_kind") == "sweep" or streamed(r))]
    return min(ok, key=median) if ok else None


def baseline_for(on_name: str, by_name: dict) -> dict | None:
    """on -> off; on-forced -> off-forced (same suffix) when it ran (not skipped), else off."""
    suffix = on_name[2:] if on_name.startswith("on") else ""
    same = by_name.get("off" + suffix)
    if same is not None and same.get("status") != "skipped":
        return same
    return by_name.get("off") or same


def comparisons(case: dict) -> list[dict]:
    runs = case["runs"]
    by_name = {r["arm"]: r for r in runs}
    orc = oracle(runs)
    rows = []
    on_arms = [r for r in runs if r.get("autoperf")] or [None]
    pairs = []
    for on in on_arms:
        offs = [baseline_for(on["arm"], by_name) if on else by_name.get("off")]
        if on and by_name.get("off") is not None and by_name["off"] is not offs[0]:
            offs.append(by_name["off"])  # e.g. on-forced vs off-forced, and vs plain off
        pairs += [(on, off) for off in offs]
    for on, off in pairs:
        m_on, m_off, m_or = median(on), median(off), median(orc)
        rows.append({
            "case": case["label"], "card": ((case["summary"].get("card") or {}).get("name")) or "?",
            "on_arm": on["arm"] if on else None, "off_arm": off["arm"] if off else None,
            "oracle_arm": orc["arm"] if orc else None,
            "off_ms": m_off, "on_ms": m_on, "oracle_ms": m_or,
            "speedup": (m_off / m_on) if (m_off and m_on) else None,
            "gap": (m_on / m_or - 1.0) if (m_on and m_or) else None,
            "off_gib": peak_gib(off), "on_gib": peak_gib(on), "oracle_gib": peak_gib(orc),
            "off_status": (off or {}).get("status"), "on_status": (on or {}).get("status"),
            "oracle_status": (orc or {}).get("status"),
        })
    return rows


# --------------------------------------------------------------------------- markdown


def _f(x, fmt="{:.1f}", none="–"):
    return none if x is None else fmt.format(x)


def _minmax(st: dict) -> str:
    if st.get("min_ms") is None:
        return "–"
    return f"{st['min_ms']:.0f}–{st['max_ms']:.0f}"


def settings_text(s: dict | None) -> str:
    if not s:
        return "–"
    if s.get("layerwise_offload"):
        txt = f"offload R={s.get('resident_layers')}"
        if s.get("total_layers") is not None:
            txt += f"/{s['total_layers']}"
        txt += f" P={s.get('prefetch')} {s.get('policy') or ''}".rstrip()
    elif s.get("dit_cpu_offload"):
        txt = "DiT cpu-offload (whole)"
    elif s.get("layerwise_offload") is False:
        txt = "resident"
    else:
        txt = "?"
    return f"{txt} [{s.get('source', '?')}]"


def summary_table(cases: list[dict]) -> str:
    lines = ["| case | card | off (ms/step) | on (ms/step) | oracle (ms/step) | on÷off speed-up | on vs oracle | "
             "peak VRAM off / on / oracle (GiB) | status off / on / oracle |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for r in comparisons(c):
            lines.append(
                f"| {r['case']} | {r['card']} | {_f(r['off_ms'])} `{r['off_arm'] or '–'}` | "
                f"{_f(r['on_ms'])} `{r['on_arm'] or '–'}` | {_f(r['oracle_ms'])} `{r['oracle_arm'] or '–'}` | "
                f"{_f(r['speedup'], '{:.2f}×')} | {_f(None if r['gap'] is None else 100 * r['gap'], '{:+.1f}%')} | "
                f"{_f(r['off_gib'], '{:.1f}')} / {_f(r['on_gib'], '{:.1f}')} / {_f(r['oracle_gib'], '{:.1f}')} | "
                f"{r['off_status'] or '–'} / {r['on_status'] or '–'} / {r['oracle_status'] or '–'} |")
    return "\n".join(lines)


def detail_table(case: dict) -> str:
    s = case["summary"]
    wl = s.get("workload") or {}
    card = s.get("card") or {}
    ver = s.get("versions") or {}
    head = [f"### {case['label']}", "",
            f"{wl.get('width')}×{wl.get('height')}" + (f"×{wl['frames']}f" if (wl.get('frames') or 1) > 1 else "") +
            f", {wl.get('steps')} steps, seed {wl.get('seed')}; card {card.get('name')} (driver {card.get('driver')}); "
            f"sglang {ver.get('sglang')}, torch {ver.get('torch')}; budget {s.get('budget')}; "
            f"extra flags `{s.get('extra_flags') or ''}`; sweep: {(s.get('sweep') or {}).get('source', '–')}", "",
            "| arm | plugin | status | steady median (ms) | IQR | min–max | n | step 0 (ms) | DenoisingStage (ms) | "
            "end-to-end (ms) | peak alloc (GiB) | ran with | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in case["runs"]:
        t = r.get("timings") or {}
        st = t.get("steady") or {}
        notes = "; ".join([x for x in [r.get("reason")] + list(r.get("warnings") or []) if x]).replace("|", "/")
        head.append(
            f"| `{r['arm']}` | {'on' if r.get('autoperf') else 'off'} | {r.get('status')} | {_f(st.get('median_ms'))} | "
            f"{_f(st.get('iqr_ms'))} | {_minmax(st)} | "
            f"{st.get('n', '–')} | {_f(t.get('step0_ms'), '{:.0f}')} | {_f(t.get('denoise_stage_ms'), '{:.0f}')} | "
            f"{_f(t.get('total_ms'), '{:.0f}')} | {_f(peak_gib(r), '{:.2f}')} | {settings_text(r.get('settings'))} | "
            f"{notes[:160]} |")
    autoperf = [ln for r in case["runs"] if r.get("autoperf")
                for ln in ((r.get("log_readback") or {}).get("autoperf_lines") or [])[:8]]
    if autoperf:
        head += ["", "Plugin log (`[autoperf]` lines of the on arm(s)):", "", "```"] + autoperf + ["```"]
    return "\n".join(head)


def markdown(cases: list[dict], plots: dict[str, list[str]] | None = None, out_dir: str | None = None) -> str:
    parts = ["# sglang-autoperf: on vs off vs sweep", "",
             "Steady step = median of denoise steps excluding step 0 (and step 1 when there are ≥ 8 steps). "
             "Oracle = best fixed streamed setting that ran ok (sweep points, and plugin-off arms whose "
             "read-back settings streamed the DiT). on÷off speed-up > 1 means the plugin is faster; "
             "'on vs oracle' is how much slower than that best fixed setting. "
             "Settings are read back from each run's log.", "",
             summary_table(cases), ""]
    for c in cases:
        parts += [detail_table(c), ""]
        for p in (plots or {}).get(c["label"], []):
            rel = os.path.relpath(p, out_dir) if out_dir else p
            parts += [f"![{os.path.basename(p)}]({rel})", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- plots


def x_resident(r: dict, total: int | None = None) -> float | None:
    """Resident DiT layers a run ran with; an un-offloaded DiT counts as all `total` layers resident."""
    s = r.get("settings") or {}
    if s.get("layerwise_offload"):
        return s.get("resident_layers")
    if s.get("layerwise_offload") is False and not s.get("dit_cpu_offload"):
        return s.get("total_layers") or total
    return None


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s).strip("_")


def plot_case(case: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in case["runs"] if median(r) is not None]
    if not runs:
        return []
    total = case["summary"].get("dit_layers") or max(
        [(r.get("settings") or {}).get("total_layers") or 0 for r in case["runs"]] or [0]) or None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    orc = oracle(case["runs"])
    markers = {1: "o", 2: "s", 4: "^"}
    unplaced = []
    for r in runs:
        x = x_resident(r, total)
        s = r.get("settings") or {}
        if x is None:
            unplaced.append(r)
            continue
        st = r["timings"]["steady"]
        yerr = [[st["median_ms"] - st["min_ms"]], [st["max_ms"] - st["median_ms"]]]
        kind = r.get("arm_kind")
        if r.get("autoperf"):
            style = dict(marker="*", markersize=16, color="tab:green", zorder=5)
        elif kind == "sweep":
            style = dict(marker=markers.get(int(s.get("prefetch") or 0), "D"), markersize=8, color="tab:blue",
                         fillstyle="none" if s.get("policy") == "strided" else "full")
        else:
            style = dict(marker="X", markersize=11, color="tab:red", zorder=4)
        ax.errorbar([x], [st["median_ms"]], yerr=yerr, linestyle="none", capsize=3, **style)
        ax.annotate(r["arm"], (x, st["median_ms"]), textcoords="offset points", xytext=(6, 4), fontsize=7)
    if orc is not None and x_resident(orc, total) is not None:
        ax.scatter([x_resident(orc, total)], [median(orc)], s=260, facecolors="none", edgecolors="gold", linewidths=2,
                   zorder=6, label="oracle (best fixed streamed setting)")
    for r in unplaced:  # e.g. whole-DiT cpu offload: no resident-layer count, draw as a line
        ax.axhline(median(r), color="tab:red", linestyle=":", linewidth=1)
        ax.annotate(f"{r['arm']} ({settings_text(r.get('settings'))})", (0, median(r)), fontsize=7,
                    textcoords="offset points", xytext=(2, 3))
    ax.plot([], [], "X", color="tab:red", label="off (sglang alone)")
    ax.plot([], [], "*", color="tab:green", markersize=12, label="on (autoperf)")
    ax.plot([], [], "o", color="tab:blue", label="sweep (o/s/^ = prefetch 1/2/4; hollow = strided)")
    ax.set_xlabel("resident DiT layers" + (f" (of {total})" if total else ""))
    ax.set_ylabel("steady step time (ms), bars = min–max")
    ax.set_title(case["label"], fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = os.path.join(out_dir, f"{_slug(case['label'])}_step_vs_resident.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def load_trace(path: str) -> list[dict]:
    with open(path) as f:
        d = json.load(f)
    if isinstance(d, dict):
        for key in ("layers", "trace", "events"):
            if isinstance(d.get(key), list):
                d = d[key]
                break
    if not isinstance(d, list):
        raise ValueError(f"{path}: expected a list of per-layer records")
    need = ("layer", "copy_start_ms", "copy_end_ms", "compute_start_ms", "compute_end_ms")
    return [x for x in d if isinstance(x, dict) and all(k in x for k in ("layer", "compute_start_ms", "compute_end_ms"))
            and all(x.get(k) is not None or k.startswith("copy") for k in need)]


def plot_trace(path: str, out_dir: str, label: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_trace(path)
    if not rows:
        return None
    t0 = min([r["compute_start_ms"] for r in rows] + [r["copy_start_ms"] for r in rows if r.get("copy_start_ms") is not None])
    fig, ax = plt.subplots(figsize=(9, max(3, 0.16 * len(rows) + 1)))
    for r in rows:
        y = r["layer"]
        if r.get("copy_start_ms") is not None and r.get("copy_end_ms") is not None:
            ax.broken_barh([(r["copy_start_ms"] - t0, r["copy_end_ms"] - r["copy_start_ms"])], (y - 0.4, 0.38),
                           color="tab:orange")
        ax.broken_barh([(r["compute_start_ms"] - t0, r["compute_end_ms"] - r["compute_start_ms"])], (y + 0.02, 0.38),
                       color="tab:blue")
    ax.plot([], [], color="tab:orange", linewidth=6, label="H2D copy (resident layers have none)")
    ax.plot([], [], color="tab:blue", linewidth=6, label="compute")
    ax.set_xlabel("ms from first event")
    ax.set_ylabel("layer")
    ax.invert_yaxis()
    ax.set_title(f"{label}: {os.path.basename(path)}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    out = os.path.join(out_dir, f"{_slug(label)}_{_slug(os.path.splitext(os.path.basename(path))[0])}_timeline.png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def make_plots(cases: list[dict], out_dir: str) -> tuple[dict[str, list[str]], str | None]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}, "matplotlib not installed: no plots (pip install 'sglang-autoperf[plots]')"
    plots: dict[str, list[str]] = {}
    for c in cases:
        paths = plot_case(c, out_dir)
        for t in c["traces"]:
            try:
                p = plot_trace(t, out_dir, c["label"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                print(f"[report] skipped trace {t}: {e}", file=sys.stderr)
                continue
            if p:
                paths.append(p)
        plots[c["label"]] = paths
    return plots, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="result folders (searched recursively for summary.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    cases = find_cases(a.results)
    if not cases:
        print("[report] no summary.json found", file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    plots, why = ({}, "plots off") if a.no_plots else make_plots(cases, a.out)
    md = markdown(cases, plots, a.out)
    if why and not a.no_plots:
        md += f"\n_{why}_\n"
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
