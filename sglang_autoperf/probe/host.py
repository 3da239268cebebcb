"""Host memory that can back pinned weight buffers: /proc/meminfo, the cgroup's limit and what it
can still take, RLIMIT_MEMLOCK. Files only, no NVML."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostMemory:
    ram_total_bytes: int
    ram_available_bytes: int
    cgroup_limit_bytes: int | None
    pinnable_bytes: int  # what page-locked host buffers can take (cgroup headroom, available RAM)
    cgroup_headroom_bytes: int | None = None  # limit - usage + reclaimable page cache
    memlock_limit_bytes: int | None = None  # RLIMIT_MEMLOCK soft limit, None if unlimited (recorded only)


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes by key."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if line.rstrip().endswith("kB") else 1)
    return out


# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number
_V1_UNLIMITED = 1 << 62


def parse_cgroup_bytes(text: str) -> int | None:
    """A cgroup memory limit/usage file: bytes, or None for "max" (v2) or v1's huge no-limit value."""
    t = text.strip()
    if not t or t == "max":
        return None
    v = int(t)
    return None if v >= _V1_UNLIMITED else v


def parse_memory_stat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_cgroup_memory(root: str | Path = "/sys/fs/cgroup", proc_self_cgroup: str | None = None) -> tuple[int | None, int | None]:
    """(tightest memory limit, headroom under it) for this process's cgroup and its ancestors.

    Looks at v2 (`memory.max`/`memory.current`) and v1 (`memory/memory.limit_in_bytes`/
    `usage_in_bytes`). Headroom adds back inactive page cache, which the kernel drops before it
    OOM-kills: a loaded checkpoint's mmap'd files would otherwise read as used memory.
    """
    root = Path(root)
    if proc_self_cgroup is None:
        proc_self_cgroup = _read(Path("/proc/self/cgroup")) or ""
    v2_path, v1_path = "/", "/"
    for line in proc_self_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hier == "0" and ctrls == "":
            v2_path = path or "/"
        elif "memory" in ctrls.split(","):
            v1_path = path or "/"
    candidates = [(root, v2_path, "memory.max", "memory.current", "inactive_file"),
                  (root / "memory", v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")]
    limit = headroom = None
    for base, path, lim_name, use_name, inactive_key in candidates:
        # Inside a container the cgroup path is usually not visible and `base` itself is the
        # container's cgroup; outside, walk from the process's cgroup up (a parent can bind tighter).
        parts = [p for p in path.split("/") if p]
        dirs = [base.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]
        for d in dirs:
            lim_text = _read(d / lim_name)
            if lim_text is None:
                continue
            lim = parse_cgroup_bytes(lim_text)
            if lim is None:
                continue
            use = parse_cgroup_bytes(_read(d / use_name) or "") or 0
            inactive = parse_memory_stat(_read(d / "memory.stat") or "").get(inactive_key, 0)
            room = max(0, min(lim, lim - use + inactive))
            limit = lim if limit is None else min(limit, lim)
            headroom = room if headroom is None else min(headroom, room)
    return limit, headroom


def _memlock_limit() -> int | None:
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def probe_host(root: str | Path = "/sys/fs/cgroup", meminfo_path: str | Path = "/proc/meminfo") -> HostMemory:
    """Host RAM that can back pinned weight buffers. Raises OSError only if /proc/meminfo is unreadable."""
    info = parse_meminfo(Path(meminfo_path).read_text())
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    limit, headroom = read_cgroup_memory(root)
    # Streamed (layerwise-offloaded) weights live in pinned host memory, and pinned pages cannot be
    # swapped or reclaimed: they must fit in what is free now and under the cgroup, or the OOM
    # killer ends the server. RLIMIT_MEMLOCK is recorded but not applied: CUDA's pinned allocations
    # (cudaHostAlloc, torch pin_memory) are not charged to it, and containers default it to a few MiB
    # while pinning gigabytes works there.
    pinnable = available if headroom is None else min(available, headroom)
    return HostMemory(ram_total_bytes=total, ram_available_bytes=available, cgroup_limit_bytes=limit,
                      pinnable_bytes=pinnable, cgroup_headroom_bytes=headroom,
                      memlock_limit_bytes=_memlock_limit())


def host_to_dict(host: HostMemory) -> dict:
    return dataclasses.asdict(host)


# ----------------------------------------------------------------------------- building a profile
