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

    @property
    def shape_bucket(self) -> str:
        """Key for tuning results: requests in one bucket share a tuned setting."""
        return f"{self.width}x{self.height}x{self.num_frames}f_b{self.batch_size}_cfg{self.cfg_passes}"
