"""Live GpuProfile probe against nvidia-smi and a measured pinned H2D copy (needs a GPU).

Needs only torch and nvidia-ml-py, not sglang. Runs under pytest (`-m gpu`) or as a script:
    PYTHONPATH=. python tests/gpu/test_probe_live.py
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, when run as a script

from sglang_autoperf.probe.gpu import format_gpu_table, probe_gpus  # noqa: E402

try:
    import pytest
except ImportError:  # the GPU machine may lack pytest: the __main__ block runs the checks
    pytest = None


def _cuda_ready() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _mark(fn):
    if pytest is None:
        return fn
    fn = pytest.mark.skipif(not _cuda_ready(), reason="needs torch with CUDA and a GPU")(fn)
    return pytest.mark.gpu(fn)


@_mark
def test_probe_matches_nvidia_smi():
    assert shutil.which("nvidia-smi"), "nvidia-smi is not on the PATH"
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid,name,memory.total,pcie.link.gen.max,pcie.link.width.max",
         "--format=csv,noheader,nounits"], check=True, capture_output=True, text=True).stdout
    smi = {}
    for line in out.strip().splitlines():
        uuid, name, mib, gen, width = (x.strip() for x in line.split(","))
        smi[uuid] = (name, int(mib), int(gen), int(width))
    profile = probe_gpus(use_env=False)  # nvidia-smi ignores CUDA_VISIBLE_DEVICES: compare all GPUs
    print(format_gpu_table(profile))
    assert profile.has_gpu, profile.no_gpu_reason
    assert {d.uuid for d in profile.devices} == set(smi)
    for d in profile.devices:
        name, mib, gen, width = smi[d.uuid]
        assert (d.name, d.memory_total_bytes // 2**20, d.pcie_generation, d.pcie_width) == (name, mib, gen, width)
        assert d.h2d_bytes_per_s > 0 and d.bf16_dense_flops > 0, f"no derived rate for {d.name}"


def measure_pinned_h2d(nbytes: int = 256 << 20, reps: int = 10) -> float:
    """Median pinned host->device bytes/s on a side stream, timed with CUDA events (as docs/measured.md §1)."""
    import torch

    host = torch.randint(0, 256, (nbytes,), dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
    side = torch.cuda.Stream(device="cuda:0")
    times = []
    with torch.cuda.stream(side):
        for i in range(reps + 2):  # two warm-up copies retrain an idle PCIe link to full speed
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(side)
            dev.copy_(host, non_blocking=True)
            b.record(side)
            b.synchronize()
            if i >= 2:
                times.append(a.elapsed_time(b) * 1e-3)
    assert torch.equal(dev[-4096:].cpu(), host[-4096:])
    return nbytes / statistics.median(times)


@_mark
def test_derived_h2d_within_15_percent_of_measured():
    profile = probe_gpus()  # honours CUDA_VISIBLE_DEVICES, so devices[0] is cuda:0
    assert profile.has_gpu, profile.no_gpu_reason
    d = profile.devices[0]
    measured = measure_pinned_h2d()
    predicted = d.h2d_bytes_per_s
    print(f"{d.name} (PCIe Gen{d.pcie_generation} x{d.pcie_width}): predicted H2D {predicted / 1e9:.1f} GB/s, "
          f"measured {measured / 1e9:.1f} GB/s (pinned 256 MiB, side stream, median of 10)")
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


if __name__ == "__main__":
    if not _cuda_ready():
        print("skipped: needs torch with CUDA and a GPU")
        sys.exit(0)
    test_probe_matches_nvidia_smi()
    test_derived_h2d_within_15_percent_of_measured()
    print("ok")
