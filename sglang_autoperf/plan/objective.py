"""What a plan and a calibration optimise for: one rule for the planner, the tuning cache's key and
the live retuner."""
from __future__ import annotations

from typing import Any


def placement_objective(performance_mode: str, pinned_offload: Any = None) -> str:
    """"report" under --performance-mode manual; "memory" (least VRAM within 2% of the fastest) when
    the user asked for memory or pinned layerwise offload on themselves (they chose streaming over
    residency: they want the VRAM back); otherwise "speed" (the fastest within the budget).
    `pinned_offload`: the value the user gave --dit-layerwise-offload, None if they gave none."""
    if performance_mode == "manual":
        return "report"
    if performance_mode == "memory" or pinned_offload is True or str(pinned_offload).lower() == "true":
        return "memory"
    return "speed"
