"""Worker-side glue between sglang's denoising loop and the overlap monitor / retuner.

Every hook here passes straight through unless `attach_worker` found layerwise-offloaded DiT
managers on a CUDA worker.
"""
from __future__ import annotations

_state = None


def attach_worker(worker, plan, settings) -> None:
    return None


def around_denoising_loop(original, stage, ctx, *args, **kwargs):
    return original(stage, ctx, *args, **kwargs)


def around_denoising_step(original, stage, ctx, step, *args, **kwargs):
    return original(stage, ctx, step, *args, **kwargs)


def around_prefetch_layer(original, manager, layer_idx, *args, **kwargs):
    return original(manager, layer_idx, *args, **kwargs)
