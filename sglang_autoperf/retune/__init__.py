"""Retuning from measured traces (pure): propose placements, decide on measured steps."""
from sglang_autoperf.retune.retuner import (
    Candidate,
    Decision,
    calibration_budget,
    decide,
    measured_layer_costs,
    placement_vram_bytes,
    propose,
    simulate_placement,
)

__all__ = [
    "Candidate", "Decision", "calibration_budget", "decide", "measured_layer_costs",
    "placement_vram_bytes", "propose", "simulate_placement",
]
