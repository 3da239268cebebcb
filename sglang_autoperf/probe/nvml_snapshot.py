"""Raw NVML reading: what `probe_gpus()` reads, as plain JSON-able data.

`read_nvml()` is the only place in the package that talks to NVML; `probe_gpus()` builds its profile
from that raw reading with the same code `profile_from_snapshot()` uses, so a recorded snapshot
replays exactly what a live probe would have seen.

    python -m sglang_autoperf.probe.nvml_snapshot > nvml-<card>-<date>.json
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any

SNAPSHOT_FORMAT = "sglang-autoperf/nvml-snapshot/1"


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used at all; the message is a sentence for the user."""


def _text(v: Any) -> Any:
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def _safe(fn, *args):
    # Any one query may be unsupported (NotSupported on consumer cards, NoPermission in containers,
    # a function missing from an older driver/pynvml): that field becomes None, never an error.
    try:
        return _text(fn(*args))
    except Exception:  # noqa: BLE001 - pynvml raises NVMLError subclasses, ctypes AttributeError
        return None


def _init():
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py (pynvml) is not installed, so the GPUs cannot be read.") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        code = getattr(e, "value", None)
        if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
            msg = "NVML (libnvidia-ml.so) was not found: this machine has no NVIDIA driver."
        elif code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
            msg = "the NVIDIA driver is installed but not loaded, so no GPU can be used."
        elif code == pynvml.NVML_ERROR_NO_PERMISSION:
            msg = "NVML refused access (no permission to the GPU device files)."
        else:
            msg = f"NVML failed to start: {e}."
        raise NvmlUnavailable(msg) from None
    except OSError as e:  # a broken libnvidia-ml.so can fail in ctypes before NVML answers
        raise NvmlUnavailable(f"NVML could not be loaded: {e}.") from None
    return pynvml


_REMOTE_TYPES = {0: "gpu", 1: "ibmnpu", 2: "switch"}


def _read_gpu(n, i: int) -> dict:
    h = n.nvmlDeviceGetHandleByIndex(i)
    mem = _safe(n.nvmlDeviceGetMemoryInfo, h)
    pci = _safe(n.nvmlDeviceGetPciInfo, h)
    cc = _safe(n.nvmlDeviceGetCudaComputeCapability, h)
    mig = _safe(n.nvmlDeviceGetMigMode, h)
    procs = _safe(n.nvmlDeviceGetComputeRunningProcesses, h)
    g = {
        "index": i,
        "name": _safe(n.nvmlDeviceGetName, h),
        "uuid": _safe(n.nvmlDeviceGetUUID, h),
        "pci_bus_id": _text(pci.busId) if pci is not None else None,
        "cc": list(cc) if cc is not None else None,
        "mem_total": mem.total if mem is not None else None,
        "mem_free": mem.free if mem is not None else None,
        # "Max" is what this device *and this slot* can train to (NVML docs); "Curr" drops when idle.
        "pcie_max_gen": _safe(n.nvmlDeviceGetMaxPcieLinkGeneration, h),
        "pcie_max_width": _safe(n.nvmlDeviceGetMaxPcieLinkWidth, h),
        "pcie_cur_gen": _safe(n.nvmlDeviceGetCurrPcieLinkGeneration, h),
        "pcie_cur_width": _safe(n.nvmlDeviceGetCurrPcieLinkWidth, h),
        "sm_clock_max": _safe(n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_SM),
        "mem_clock_max": _safe(n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_MEM),
        "power_limit_mw": _safe(n.nvmlDeviceGetPowerManagementLimit, h),
        "mig_mode": list(mig) if mig is not None else None,  # [current, pending]
        # usedGpuMemory is None where NVML cannot tell (e.g. another container's process)
        "processes": None if procs is None else [
            {"pid": p.pid, "used_bytes": p.usedGpuMemory} for p in procs],
        "nvlink": [],
    }
    for link in range(getattr(n, "NVML_NVLINK_MAX_LINKS", 18)):
        state = _safe(n.nvmlDeviceGetNvLinkState, h, link)
        if state is None:  # NotSupported (no NVLink) or past the device's last link
            break
        entry = {"link": link, "active": bool(state), "peer_bus_id": None, "remote_type": None}
        if state:
            peer = _safe(n.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            entry["peer_bus_id"] = _text(peer.busId) if peer is not None else None
            rtype = _safe(n.nvmlDeviceGetNvLinkRemoteDeviceType, h, link)
            entry["remote_type"] = _REMOTE_TYPES.get(rtype) if rtype is not None else None
        g["nvlink"].append(entry)
    return g


def read_nvml() -> dict:
    """Every NVML device (all of them, before CUDA_VISIBLE_DEVICES) plus the driver, raw.

    Raises NvmlUnavailable when NVML cannot be used at all; individual fields are None instead.
    """
    n = _init()
    try:
        count = n.nvmlDeviceGetCount()
        return {
            "format": SNAPSHOT_FORMAT,
            "driver": _safe(n.nvmlSystemGetDriverVersion),
            "nvml_version": _safe(n.nvmlSystemGetNVMLVersion),
            "gpus": [_read_gpu(n, i) for i in range(count)],
        }
    except n.NVMLError as e:
        raise NvmlUnavailable(f"NVML failed while listing GPUs: {e}.") from None
    finally:
        try:
            n.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutdown failing must not mask the reading
            pass


def record_snapshot() -> dict:
    """`read_nvml()` plus host memory, the environment that selects GPUs, and a "source" label."""
    from .host import host_to_dict, probe_host

    snap = read_nvml()
    snap["host"] = host_to_dict(probe_host())
    snap["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    snap["cuda_device_order"] = os.environ.get("CUDA_DEVICE_ORDER")
    names = sorted({g["name"] or "unknown GPU" for g in snap["gpus"]})
    gpus = f"{len(snap['gpus'])}x {' + '.join(names)}" if snap["gpus"] else "no GPU"
    try:
        from importlib.metadata import version
        lib = f"nvidia-ml-py {version('nvidia-ml-py')}"
    except Exception:  # noqa: BLE001 - the label is informative only
        lib = "nvidia-ml-py"
    snap["source"] = f"recorded on {gpus}, {datetime.date.today().isoformat()}, nvml via {lib}"
    return snap


def main() -> int:
    try:
        snap = record_snapshot()
    except NvmlUnavailable as e:
        print(f"no snapshot: {e}", file=sys.stderr)
        return 1
    json.dump(snap, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
