"""Workload: what one request asks of the DiT (tokens per forward pass, passes per step, steps)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    width: int
    height: int
    num_frames: int  # 1 for images
    steps: int
    batch_size: int
    cfg_passes: int  # 2 with classifier-free guidance (unless CFG-parallel splits it), else 1
    tokens_per_pass: int  # DiT sequence length (image/video tokens) of one forward pass
    text_tokens: int  # encoder tokens attended to (cross-attention or joint attention)


def workload_for(model, width: int, height: int, num_frames: int = 1, steps: int | None = None,
                 batch_size: int = 1, guidance_scale: float | None = None,
                 cfg_parallel: bool = False) -> Workload:
    """The DiT's work for one request to `model` (a ModelProfile) at this shape.

    Tokens: latent frames (F-1)//temporal+1 over the temporal patch, times the latent grid
    (H/spatial, W/spatial) over the spatial patch; e.g. Wan 480x832x81f -> 21*30*52 = 32,760.
    """
    if width <= 0 or height <= 0 or num_frames <= 0 or batch_size <= 0:
        raise ValueError(f"width, height, num_frames and batch_size must be positive: "
                         f"{width}x{height}x{num_frames}f b{batch_size}")
    dit = model.dit
    patch = tuple(dit.patch_size) if dit is not None else (2, 2)
    pt, ph, pw = patch if len(patch) == 3 else (1, *patch)
    sc, tc = model.vae_spatial_compression, model.vae_temporal_compression
    frames = num_frames if model.is_video else 1
    latent_frames = (frames - 1) // tc + 1 if tc > 1 else frames
    tokens = -(-latent_frames // pt) * (height // sc // ph) * (width // sc // pw)

    if guidance_scale is None:
        cfg = model.cfg_default
    else:  # guidance-distilled families embed the scale; it never adds a pass (sglang_adapter.models says which)
        cfg = bool(getattr(model, "guidance_is_cfg", False)) and guidance_scale > 1.0
    passes = 2 if cfg and not cfg_parallel else 1
    return Workload(
        width=width, height=height, num_frames=frames,
        steps=int(steps) if steps is not None else int(getattr(model, "default_steps", 50)),
        batch_size=batch_size, cfg_passes=passes, tokens_per_pass=tokens,
        text_tokens=int(getattr(model, "text_tokens", 512)),
    )
