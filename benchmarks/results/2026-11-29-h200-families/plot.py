"""plot.png of this page: each sweep point's step time against its measured peak, per family.

    python3 plot.py   (reads summary.json beside it)
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GiB = 1024**3
HERE = Path(__file__).parent
TITLES = {"zimage": "Z-Image-Turbo", "klein": "FLUX.2-klein-4B"}

summary = json.loads((HERE / "summary.json").read_text())["families"]
fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 3.6))
for ax, (name, fam) in zip(axes, summary.items()):
    budget, per = next(iter(fam["sweep"]["per_budget"].items()))
    points = fam["sweep"]["points"]
    ax.scatter([p["peak_bytes"] / GiB for p in points], [p["step_ms"] for p in points], s=12, c="grey",
               label="sweep point")
    marks = (("all_resident", "everything resident", "k", "s"), ("best_measured_feasible", f"best within {budget}", "g", "*"),
             ("plugin_choice", "the plugin's choice", "r", "o"), ("planner_choice", "the planner's start", "b", "^"))
    for key, label, color, marker in marks:
        p = per.get(key)
        if p:
            ax.scatter([p["peak_bytes"] / GiB], [p["step_ms"]], s=70, c=color, marker=marker, label=label)
    ax.axvline(int(budget.removesuffix("GiB")), color="r", lw=0.8, ls="--")
    ax.set_title(f"{TITLES[name]}, {budget} free (ballast)", fontsize=10)
    ax.set_xlabel("measured peak, GiB (one process)")
    ax.set_ylabel("ms / step (drift-corrected)")
    ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(HERE / "plot.png", dpi=90)
