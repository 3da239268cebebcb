"""Rates derived from what NVML reports: host->device copy bandwidth and datasheet bf16 tensor peak.

`device` is a probe.gpu.GpuDevice (read by attribute: this module sits below probe/gpu.py).
These are priors for the cost model (the measurement corrects them). 0.0 means "unknown": the caller
must measure rather than guess. Efficiency below peak is the planner's business, not this module's.
"""
from __future__ import annotations

import re
from typing import Any

# Pinned H2D bytes/s for an x16 link, by PCIe generation.
_PCIE_X16_H2D = {
    1: 3.2e9,  # 80% of the 4 GB/s raw x16 rate (8b/10b), same efficiency as Gen3 below
    2: 6.4e9,  # 80% of 8 GB/s raw
    3: 12.5e9,  # published practical Gen3 x16 (~80% of 15.75 GB/s raw)
    4: 25e9,  # published: RTX 4090/5090-class Gen4 hosts 24-26 GB/s (docs/measured.md §1)
    5: 51e9,  # measured, docs/measured.md §1: H100 50.6-52.2, H200 51.8-55.4 GB/s (256 MiB-1 GiB pinned)
    6: 102e9,  # not measured: Gen5 x2, the same ~81% of raw that Gen5 reached
}

# Grace-Hopper/Blackwell superchips feed the GPU over NVLink-C2C, not PCIe.
_C2C_H2D = 350e9  # published GH200 H2D 346-421 GB/s (docs/measured.md §1); low end, as a prior


def expected_h2d_bytes_per_s(device: Any) -> float:
    """Pinned host->device copy rate to expect on this device's link; 0.0 when the link is unknown."""
    name = device.name.upper()
    if "GH200" in name or "GB200" in name or "GB300" in name:
        return _C2C_H2D
    gen, width = device.pcie_generation, device.pcie_width
    # The link *maximum*: NVML's max is already capped by the slot, and the *current* gen/width
    # drops on an idle GPU for power saving, then retrains to max as soon as copies start.
    if not gen or not width or gen not in _PCIE_X16_H2D:
        return 0.0
    return _PCIE_X16_H2D[gen] * min(width, 16) / 16


# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, matched as a whole word of the NVML name
# ("A100" must not match "RTX A1000"). First match wins, so more specific names come first.
_BF16_BY_NAME = (
    ("H100 PCIE", 756e12),  # H100 datasheet: PCIe 1,513 TF sparse / 2
    ("H100 NVL", 835e12),  # H100 datasheet: NVL 1,671 TF sparse / 2
    ("H200 NVL", 835e12),  # H200 datasheet: NVL 1,671 TF sparse / 2
    ("H100", 989e12),  # H100 datasheet: SXM 1,979 TF sparse / 2 ("H100 80GB HBM3" is SXM)
    ("H800", 989e12),  # H800 SXM: H100 SXM silicon, same tensor rate
    ("H200", 989e12),  # H200 datasheet: SXM 1,979 TF sparse / 2
    ("GH200", 989e12),  # GH200 datasheet: H100-class GPU, 1,979 TF sparse / 2
    ("H20", 148e12),  # H20 datasheet: 148 TF bf16 dense
    ("GB200", 2500e12),  # GB200 NVL72 datasheet: 5 PF sparse per GPU / 2 (1,200 W)
    ("B200", 2250e12),  # HGX B200 datasheet: 4.5 PF sparse per GPU / 2 (1,000 W)
    ("B300", 2250e12),  # HGX B300 datasheet: 36 PF sparse per 8 GPUs / 2
    ("A100", 312e12),  # A100 datasheet: 312 TF dense (624 sparse)
    ("A800", 312e12),  # A800: A100 silicon
    ("L40S", 362e12),  # L40S datasheet: 362.05 TF dense (733 sparse)
    ("L40", 181e12),  # L40 datasheet: 181.05 TF dense (362.1 sparse)
    ("L4", 121e12),  # L4 datasheet: 121 TF dense (242 sparse)
    ("RTX 5090", 209e12),  # Blackwell GeForce whitepaper: 209.5 TF bf16 w/ fp32 accumulate, dense
    ("RTX 4090", 165e12),  # Ada whitepaper: 165.2 TF bf16 w/ fp32 accumulate, dense
)

# Fallback by compute capability: the smallest common card of that architecture, so an unknown
# name is never priced faster than it might be.
_BF16_BY_CC = {
    (8, 0): 312e12,  # A100
    (8, 6): 71e12,  # RTX 3090 (Ampere whitepaper: 71 TF bf16 w/ fp32 accumulate); A10 is 125
    (8, 7): 0.0,  # Jetson Orin: too varied to guess
    (8, 9): 121e12,  # L4
    (9, 0): 756e12,  # H100 PCIe
    (10, 0): 2250e12,  # B200
    (10, 3): 2250e12,  # B300
    (12, 0): 209e12,  # RTX 5090
}


def bf16_dense_flops(device: Any) -> float:
    """Datasheet dense bf16 tensor peak in FLOP/s; 0.0 when neither the name nor the cc is known."""
    name = device.name.upper()
    for key, flops in _BF16_BY_NAME:
        if re.search(rf"(?<![A-Z0-9]){key}(?![A-Z0-9])", name):
            return flops
    cc = device.compute_capability
    if cc is None:
        return 0.0
    return _BF16_BY_CC.get(tuple(cc), 0.0)
