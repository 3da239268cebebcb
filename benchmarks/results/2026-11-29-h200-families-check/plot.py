"""plot.png from summary.json: step time vs the card's measured peak, raw and compressed, per family.
    python3 plot.py   (needs matplotlib)"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
s = json.load(open(os.path.join(HERE, "summary.json")))
fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
for ax, (title, key, ylim) in zip(axes, (("FLUX.2-klein-4B, 8 GiB free", "call2_klein", None),
                                         ("Z-Image-Turbo, 10 GiB free", "call3_zimage", (110, 140)))):
    rows = s[key]["sweep"]["rows"]
    for r in rows:
        plugin = r["point"].startswith("plugin")
        ax.scatter(r["peak_gib_card"], r["step_ms"], marker="^" if r["compressed"] else "o", s=140 if plugin else 50,
                   facecolors="none" if plugin else ("tab:orange" if r["compressed"] else "tab:blue"),
                   edgecolors="red" if plugin else ("tab:orange" if r["compressed"] else "tab:blue"), linewidths=2 if plugin else 1)
        if not plugin and (ylim is None or ylim[0] <= r["step_ms"] <= ylim[1]):
            ax.annotate(r["point"].replace(" resident p2", ""), (r["peak_gib_card"], r["step_ms"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axvline(139.80, color="grey", ls="--", lw=1)
    ax.set_title(title)
    ax.set_xlabel("card's peak GiB in the sweep process (ballast included; the card: 139.80)")
    ax.set_ylabel("ms per step (drift-corrected, median of blocks)")
    if ylim:
        ax.set_ylim(*ylim)
axes[0].scatter([], [], marker="o", color="tab:blue", label="raw streaming")
axes[0].scatter([], [], marker="^", color="tab:orange", label="compressed streaming")
axes[0].scatter([], [], marker="^", facecolors="none", edgecolors="red", s=140, label="the plugin's cached choice")
axes[0].scatter([], [], marker="o", facecolors="none", edgecolors="red", s=140, label="its placement, raw streaming")
axes[0].legend(fontsize=8)
fig.suptitle("H200, sglang 0.5.23 (GPU sandbox kit), 1024x1024, 8 steps: one sweep process per family beside a ballast"
             " (Z-Image 14 resident compressed: 413 ms, off the axis)", fontsize=10)
fig.tight_layout()
fig.savefig(os.path.join(HERE, "plot.png"), dpi=110)
