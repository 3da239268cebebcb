"""GpuProfile: what the GPUs (and the host that feeds them) can hold and move, read through NVML.

Pure data plus two readers: `probe_gpus()` (live NVML) and `profile_from_snapshot()` (a recorded
JSON snapshot, so that everything downstream is testable on a CPU machine). Never raises for a
missing GPU or a missing NVML: the profile says "no GPU" and why.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NvLinkPeer:
    link: int
    active: bool
    peer_bus_id: str
    peer_index: int | None  # index of the visible GPU at the other end, None if not visible


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class GpuDevice:
    index: int  # index among the *visible* devices (what torch calls cuda:index)
    name: str
    uuid: str
    pci_bus_id: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int
    memory_free_bytes: int
    pcie_generation: int | None  # the link's maximum
    pcie_width: int | None
    pcie_current_generation: int | None
    pcie_current_width: int | None
    power_limit_w: float | None
    mig_enabled: bool
    nvlink: tuple[NvLinkPeer, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    # Derived from the link and architecture (probe/hardware.py); used by the cost model.
    h2d_bytes_per_s: float = 0.0
    bf16_dense_flops: float = 0.0


@dataclass(frozen=True)
class HostMemory:
    ram_total_bytes: int
    ram_available_bytes: int
    cgroup_limit_bytes: int | None
    pinnable_bytes: int  # what page-locked host buffers can take (RLIMIT_MEMLOCK, cgroup, available RAM)


@dataclass(frozen=True)
class GpuProfile:
    devices: tuple[GpuDevice, ...]
    driver_version: str | None
    host: HostMemory | None
    source: str  # "nvml", "snapshot:<file>", or "none"
    no_gpu_reason: str | None = None  # set when devices is empty

    @property
    def has_gpu(self) -> bool:
        return bool(self.devices)
