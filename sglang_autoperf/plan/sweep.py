"""Cost-model predictions for explicit offload settings: what benchmarks/compare.py uses to prune
an exhaustive sweep to the handful of points around the planner's choice."""
from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=8)
def _model(model_path: str):
    from sglang_autoperf.probe.model import probe_model

    return probe_model(model_path)


@functools.lru_cache(maxsize=1)
def _gpu():
    from sglang_autoperf.probe.gpu import probe_gpus

    return probe_gpus()


def predict_step_ms(model_path: str, workload: dict[str, Any], setting: dict[str, Any],
                    free_bytes: int | None) -> float | None:
    """Predicted denoising step (ms) with the DiT streamed at `setting` ({resident, prefetch,
    policy}), or None where it would not fit `free_bytes` (or no GPU is visible to predict for)."""
    from sglang_autoperf.plan.planner import make_plan
    from sglang_autoperf.probe.workload import workload_for

    gpu = _gpu()
    if not gpu.has_gpu:
        return None
    model = _model(str(model_path))
    wl = workload_for(model, int(workload["width"]), int(workload["height"]),
                      num_frames=int(workload.get("frames") or workload.get("num_frames") or 1),
                      steps=workload.get("steps"))
    pinned = {
        "dit_layerwise_offload": True,
        "dit_layerwise_resident_layers": int(setting["resident"]),
        "dit_offload_prefetch_size": int(setting["prefetch"]),
        "dit_layerwise_residency_policy": str(setting.get("policy", "leading")),
    }
    plan = make_plan(gpu=gpu, model=model, workload=wl, pinned=pinned, current=dict(pinned),
                     budget_bytes=free_bytes)
    if free_bytes is not None and plan.predicted.vram_bytes > free_bytes:
        return None
    return float(plan.predicted.step_ms)
