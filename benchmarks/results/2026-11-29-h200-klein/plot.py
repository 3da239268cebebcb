"""plot.png of this page: per call, every point's median step (ms) against its card-wide peak beside the
8 GiB ballast, the plugin's choice marked.

    python3 plot.py   (reads summary.json beside it; matplotlib)
"""
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GiB = 1024**3
CARD = 150_109_880_320  # bytes
HERE = Path(__file__).parent
calls = json.loads((HERE / "summary.json").read_text())["calls"]
titles = {"2": "call 2 (the call-1 choice)", "3": "call 3 (second reading)", "4": "call 4 (compression off)"}
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), sharey=True)
for ax, (call, title) in zip(axes, titles.items()):
    for label, point in calls[call]["points"].items():
        ms = statistics.median(b["median_ms"] for b in point["blocks"])
        peak = max(b["peak_bytes"] for b in point["blocks"]) / GiB
        plugin = label.startswith("plugin")
        ax.scatter([peak], [ms], s=70 if plugin else 18, c="r" if plugin else ("b" if label == "reference" else "grey"),
                   marker="o")
        ax.annotate(label.replace("limit ", "").replace(" strided", "").split(" (")[0], (peak, ms), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
    ax.axvline(CARD / GiB, color="r", lw=0.8, ls="--")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("card-wide peak, GiB (ballast included; red line: the card)")
axes[0].set_ylabel("ms per step (median of the blocks)")
fig.suptitle("FLUX.2-klein-4B-shaped 1024x1024 beside an 8 GiB ballast, H200: red = the plugin's choice, blue = start",
             fontsize=10)
fig.tight_layout()
fig.savefig(HERE / "plot.png", dpi=110)
