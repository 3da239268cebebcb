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


def _workload(model, workload: dict[str, Any]):
    from sglang_autoperf.probe.workload import workload_for

    return workload_for(model, int(workload["width"]), int(workload["height"]),
                        num_frames=int(workload.get("frames") or workload.get("num_frames") or 1),
                        steps=workload.get("steps"))


def benchmark_sweep_points(model_path: str, workload: dict[str, Any], free_bytes: int | None,
                           max_points: int = 4) -> list[dict[str, Any]]:
    """The points an oracle sweep should measure: the planner's own streamed choice under
    `free_bytes` and its neighbours (resident +-1 and +-a step, prefetch +-1, the other policy),
    best predicted first, infeasible ones dropped. Resident counts are sglang's setting, applied
    to *each* layer list (FLUX: 17 means 34 of 57 blocks), so the grid is over the longest list."""
    from sglang_autoperf.plan.planner import make_plan

    gpu = _gpu()
    if not gpu.has_gpu:
        return []
    model = _model(str(model_path))
    plan = make_plan(gpu=gpu, model=model, workload=_workload(model, workload),
                     pinned={"dit_layerwise_offload": True}, current={}, budget_bytes=free_bytes)
    d = plan.dit
    longest = max((g.count for g in model.dit.block_groups), default=0) if model.dit else 0
    step = max(1, longest // 8)
    r0, p0, pol0 = int(d.resident_layers), max(1, int(d.prefetch_layers)), d.policy
    other = "strided" if pol0 == "leading" else "leading"
    around = [(r0, p0, pol0), (r0 + 1, p0, pol0), (r0 - 1, p0, pol0), (r0, p0 + 1, pol0),
              (r0, max(1, p0 - 1), pol0), (r0, p0, other), (r0 - step, p0, pol0), (r0 + step, p0, pol0)]
    scored, seen = [], set()
    for r, p, pol in around:
        if not 0 <= r <= longest or (r, p, pol) in seen:
            continue
        seen.add((r, p, pol))
        ms = predict_step_ms(model_path, workload, {"resident": r, "prefetch": p, "policy": pol}, free_bytes)
        if ms is not None:
            scored.append((ms, {"resident": r, "prefetch": p, "policy": pol}))
    # the planner's choice first (the sweep must contain what the plugin would start from), then by prediction
    first = [pt for _, pt in scored if (pt["resident"], pt["prefetch"], pt["policy"]) == (r0, p0, pol0)]
    rest = [pt for _, pt in sorted(scored, key=lambda x: x[0]) if pt not in first]
    return (first + rest)[:max_points]


def predict_step_ms(model_path: str, workload: dict[str, Any], setting: dict[str, Any],
                    free_bytes: int | None) -> float | None:
    """Predicted denoising step (ms) with the DiT streamed at `setting` ({resident, prefetch,
    policy}), or None where it would not fit `free_bytes` (or no GPU is visible to predict for)."""
    from sglang_autoperf.plan.planner import make_plan

    gpu = _gpu()
    if not gpu.has_gpu:
        return None
    model = _model(str(model_path))
    wl = _workload(model, workload)
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
