"""The calibration schedule, in steps and seconds: pure arithmetic shared by the startup plan
(how long a calibration warmup must be) and the live tuner (how many candidates a request can
measure). Calibration, per shape bucket, once:

  baseline: the start placement, one untraced step then 2 traced (BASELINE_STEPS);
  candidates: each one transition step (re-pinning residents costs a copy) and 2 traced;
  closing baseline: the start placement again, so a card whose speed drifts during calibration
  widens the baseline's spread instead of favouring whatever ran later (an H200 drifted 10-20%
  within one warmup, 2026-11-27: benchmarks/results/2026-11-27-h200/README.md).
"""
from __future__ import annotations

STEPS_PER_TRIAL = 3  # one transition step + 2 measured
BASELINE_STEPS = 3  # step 0 of a request also holds kernel autotuning: not measured
MAX_CANDIDATES = 3
MAX_CALIBRATION_S = 90.0  # a calibration across requests stops measuring after this
# A calibration warmup is extra denoising steps before the user's first request: bound its time,
# so a model with multi-second steps (Wan-14B at 81 frames: ~8 s a step on an H200) does not pay
# a minute for it.
MAX_WARMUP_S = 20.0


def calibration_steps(max_candidates: int = MAX_CANDIDATES) -> int:
    """Denoising steps a warmup request needs to calibrate `max_candidates` placements."""
    return BASELINE_STEPS + STEPS_PER_TRIAL * max_candidates + (STEPS_PER_TRIAL if max_candidates else 0)


def affordable_candidates(steps: int) -> int:
    """Candidates a calibration of `steps` denoising steps can measure (with the closing baseline)."""
    return max(0, min(MAX_CANDIDATES, (steps - BASELINE_STEPS - STEPS_PER_TRIAL) // STEPS_PER_TRIAL))


def warmup_candidates(step_ms: float, other_steps: int = 0) -> int:
    """How many candidate placements a calibration warmup can try within MAX_WARMUP_S, when
    `other_steps` of it go to something else (the compressed-vs-raw A/B)."""
    if step_ms <= 0:
        return MAX_CANDIDATES  # no prediction: the live time bound (MAX_CALIBRATION_S) still applies
    return affordable_candidates(int(MAX_WARMUP_S * 1e3 / step_ms) - other_steps)
