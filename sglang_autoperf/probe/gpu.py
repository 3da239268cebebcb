"""GpuProfile: what the GPUs (and the host that feeds them) can hold and move, read through NVML.

Pure data plus two readers: `probe_gpus()` (live NVML) and `profile_from_snapshot()` (a recorded
JSON snapshot, so that everything downstream is testable on a CPU machine). Never raises for a
missing GPU or a missing NVML: the profile says "no GPU" and why.

Both readers go through `_profile_from_raw()`: the live probe first takes a raw reading
(`nvml_snapshot.read_nvml()`, the same dict a snapshot file holds), so replaying a snapshot
exercises exactly the code a live probe runs.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import hardware
from .host import HostMemory, probe_host
from .files import read_json_file
from ..units import gib

# Bundled GPU profiles: snapshots recorded on real cards (H100, H200) and ones written from vendor
# datasheets for cards not recorded; `--gpu-snapshot h200` finds them by name (bundled_profile_path).
DATASHEET_DIR = Path(__file__).resolve().parents[1] / "data" / "gpus"


class SnapshotError(ValueError):
    """A snapshot that cannot be read; the message names the file and what was expected."""


@dataclass(frozen=True)
class NvLinkPeer:
    link: int
    active: bool
    peer_bus_id: str
    peer_index: int | None  # index of the visible GPU at the other end, None if not visible
    # "gpu", "switch" (NVSwitch: every GPU on the switch fabric is a peer) or "ibmnpu"; None if unknown
    remote_type: str | None = None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None  # None where NVML cannot tell (e.g. a process of another container)


@dataclass(frozen=True)
class GpuDevice:
    index: int  # index among the *visible* devices (what torch calls cuda:index)
    name: str
    uuid: str
    pci_bus_id: str
    compute_capability: tuple[int, int] | None
    memory_total_bytes: int
    memory_free_bytes: int
    pcie_generation: int | None  # the link's maximum
    pcie_width: int | None
    pcie_current_generation: int | None
    pcie_current_width: int | None
    power_limit_w: float | None
    mig_enabled: bool | None  # None where NVML cannot tell (cards without MIG say NotSupported)
    nvlink: tuple[NvLinkPeer, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    # Derived from the link and architecture (probe/hardware.py); used by the cost model.
    h2d_bytes_per_s: float = 0.0
    bf16_dense_flops: float = 0.0
    nvml_index: int | None = None  # NVML's own index (PCI bus order), differs from index under CUDA_VISIBLE_DEVICES


@dataclass(frozen=True)
class GpuProfile:
    devices: tuple[GpuDevice, ...]
    driver_version: str | None
    host: HostMemory | None
    source: str  # "nvml", "snapshot:<file>", or "none"
    no_gpu_reason: str | None = None  # set when devices is empty
    snapshot_label: str | None = None  # a snapshot's own "source" text: card, date, how it was made
    warnings: tuple[str, ...] = ()  # things the probe could not settle, one sentence each

    @property
    def has_gpu(self) -> bool:
        return bool(self.devices)

    def nvlink_connected(self, a: int, b: int) -> bool:
        """Whether visible GPUs a and b share NVLink, directly or through NVSwitch."""
        da = next((d for d in self.devices if d.index == a), None)
        db = next((d for d in self.devices if d.index == b), None)
        if da is None or db is None or a == b:
            return False
        if any(p.active and p.peer_index == b for p in da.nvlink):
            return True
        if any(p.active and p.peer_index == a for p in db.nvlink):
            return True
        on_switch = lambda d: any(p.active and p.remote_type == "switch" for p in d.nvlink)  # noqa: E731
        return on_switch(da) and on_switch(db)


# ----------------------------------------------------------------------------- GPU selection (pure)

def parse_visible_devices(visible: str | None, uuids: Sequence[str | None]) -> tuple[tuple[int, ...], str | None]:
    """NVML indices that CUDA exposes for CUDA_VISIBLE_DEVICES=`visible`, in CUDA order, and a note.

    `uuids` are the NVML devices' UUIDs in NVML order. Like CUDA, entries are indices or (prefixes of)
    `GPU-...` UUIDs, and the list ends at the first entry that names no device: `-1` hides every GPU.
    The note (None when the whole list was used) says where and why the list was cut.
    """
    count = len(uuids)
    if visible is None:
        return tuple(range(count)), None
    if not visible.strip():
        return (), "CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU."
    out: list[int] = []
    for raw in visible.split(","):
        tok = raw.strip()
        idx, why = _resolve_visible_entry(tok, uuids)
        if idx is not None and idx in out:
            idx, why = None, "it repeats an earlier entry"
        if idx is None:
            return tuple(out), (f"CUDA_VISIBLE_DEVICES={visible!r} ends at {tok!r} ({why}): CUDA ignores "
                                f"that entry and everything after it.")
        out.append(idx)
    return tuple(out), None


def _resolve_visible_entry(tok: str, uuids: Sequence[str | None]) -> tuple[int | None, str]:
    if re.fullmatch(r"\d+", tok):
        i = int(tok)
        return (i, "") if i < len(uuids) else (None, f"there are {len(uuids)} GPUs")
    up = tok.upper()
    if up.startswith("MIG-"):
        return None, "MIG instances are not probed"
    if up.startswith("GPU-"):
        hits = [i for i, u in enumerate(uuids) if u and u.upper().startswith(up)]
        if len(hits) == 1:
            return hits[0], ""
        return None, "no GPU has that UUID" if not hits else "that UUID prefix matches several GPUs"
    return None, "not a device index or GPU UUID"


def select_devices(num_visible: int, base_gpu_id: int = 0, num_gpus: int | None = None) -> tuple[tuple[int, ...], str | None]:
    """The visible ordinals (cuda:N) an sglang server uses: `num_gpus` of them from `base_gpu_id` on.

    `num_gpus=None` means every visible GPU from the base on. Returns what exists and a note when the
    request could not be met in full.
    """
    if base_gpu_id < 0:
        return (), f"--base-gpu-id {base_gpu_id} is negative."
    if base_gpu_id >= num_visible:
        return (), f"--base-gpu-id {base_gpu_id} is past the {num_visible} visible GPU(s)."
    if num_gpus is not None and num_gpus < 1:
        return (), f"--num-gpus {num_gpus} asks for no GPU."
    end = num_visible if num_gpus is None else base_gpu_id + num_gpus
    chosen = tuple(range(base_gpu_id, min(end, num_visible)))
    if end > num_visible:
        return chosen, (f"--num-gpus {num_gpus} from --base-gpu-id {base_gpu_id} asks for more GPUs than the "
                        f"{num_visible} visible; only {len(chosen)} are profiled.")
    return chosen, None


def normalize_bus_id(bus_id: str | None) -> str:
    """NVML's PCI form, upper case with an 8-digit domain, so NVLink peers compare equal to devices."""
    if not bus_id:
        return ""
    m = re.fullmatch(r"(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)", bus_id.strip())
    if not m:
        return bus_id.strip().upper()
    dom, bus, dev, fn = (int(x, 16) if x else 0 for x in m.groups())
    return f"{dom:08X}:{bus:02X}:{dev:02X}.{fn:X}"


# ----------------------------------------------------------------------------- host memory

def _int(v: Any) -> int | None:
    # Snapshots from the sandbox recorder write failures as "unavailable: <error>" strings.
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and not v.startswith("unavailable") else None


def _cc(v: Any) -> tuple[int, int] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_int(x) is not None for x in v):
        return int(v[0]), int(v[1])
    return None


def _device(g: Mapping[str, Any], index: int, warnings: list[str]) -> GpuDevice:
    name = _str(g.get("name")) or "unknown GPU"
    total, free = _int(g.get("mem_total")), _int(g.get("mem_free"))
    if total is None or free is None:
        warnings.append(f"GPU {index} ({name}): NVML gave no memory figures; 0 bytes assumed.")
    mig = g.get("mig_mode")
    mig_enabled = bool(mig[0]) if isinstance(mig, (list, tuple)) and mig and _int(mig[0]) is not None else None
    power_mw = _int(g.get("power_limit_mw"))
    procs = g.get("processes")
    processes = tuple(GpuProcess(pid=p["pid"], used_bytes=_int(p.get("used_bytes")))
                      for p in (procs if isinstance(procs, list) else ())
                      if isinstance(p, Mapping) and _int(p.get("pid")) is not None)
    dev = GpuDevice(
        index=index,
        name=name,
        uuid=_str(g.get("uuid")) or "",
        pci_bus_id=normalize_bus_id(_str(g.get("pci_bus_id"))),
        compute_capability=_cc(g.get("cc")),
        memory_total_bytes=total or 0,
        memory_free_bytes=free or 0,
        pcie_generation=_int(g.get("pcie_max_gen")),
        pcie_width=_int(g.get("pcie_max_width")),
        pcie_current_generation=_int(g.get("pcie_cur_gen")),
        pcie_current_width=_int(g.get("pcie_cur_width")),
        power_limit_w=power_mw / 1000 if power_mw is not None else None,
        mig_enabled=mig_enabled,
        processes=processes,
        nvml_index=_int(g.get("index")),
    )
    return dataclasses.replace(dev, h2d_bytes_per_s=hardware.expected_h2d_bytes_per_s(dev),
                               bf16_dense_flops=hardware.bf16_dense_flops(dev))


def _nvlinks(g: Mapping[str, Any], bus_to_index: Mapping[str, int]) -> tuple[NvLinkPeer, ...]:
    out = []
    for e in g.get("nvlink") or ():
        if not isinstance(e, Mapping) or _int(e.get("link")) is None:
            continue
        bus = normalize_bus_id(_str(e.get("peer_bus_id")))
        out.append(NvLinkPeer(link=e["link"], active=bool(e.get("active")), peer_bus_id=bus,
                              peer_index=bus_to_index.get(bus) if bus else None,
                              remote_type=_str(e.get("remote_type"))))
    return tuple(out)


def _profile_from_raw(raw: Mapping[str, Any], *, visible: str | None, base_gpu_id: int, num_gpus: int | None,
                      source: str, host: HostMemory | None, label: str | None = None,
                      device_order: str | None = None) -> GpuProfile:
    gpus = list(raw.get("gpus") or [])
    driver = _str(raw.get("driver"))
    warnings: list[str] = []

    def empty(reason: str) -> GpuProfile:
        return GpuProfile(devices=(), driver_version=driver, host=host, source=source, no_gpu_reason=reason,
                          snapshot_label=label, warnings=tuple(warnings))

    if not gpus:
        return empty("NVML sees no GPU on this machine.")
    vis, note = parse_visible_devices(visible, [_str(g.get("uuid")) for g in gpus])
    if note:
        warnings.append(note)
    if not vis:
        return empty(note or f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU.")
    chosen, note = select_devices(len(vis), base_gpu_id, num_gpus)
    if note:
        warnings.append(note)
    if not chosen:
        return empty(note or "no GPU selected.")

    devices = [_device(gpus[vis[i]], i, warnings) for i in chosen]
    # NVLink peers resolve among the profiled devices only: a peer outside them is no use to the plan.
    bus_to_index = {d.pci_bus_id: d.index for d in devices if d.pci_bus_id}
    devices = [dataclasses.replace(d, nvlink=_nvlinks(gpus[vis[d.index]], bus_to_index)) for d in devices]

    if len({gpus[v].get("name") for v in vis}) > 1 and device_order != "PCI_BUS_ID":
        # CUDA orders fastest-first by default; NVML by PCI bus. They agree when all GPUs are alike.
        warnings.append("the visible GPUs differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID, so cuda:N may "
                        "not be the GPU this profile calls index N.")
    for d in devices:
        if d.mig_enabled:
            warnings.append(f"GPU {d.index} ({d.name}) is in MIG mode: a CUDA process sees one MIG instance, "
                            "smaller than the memory shown here.")
    return GpuProfile(devices=tuple(devices), driver_version=driver, host=host, source=source,
                      snapshot_label=label, warnings=tuple(warnings))


def probe_gpus(visible: str | None = None, base_gpu_id: int = 0, num_gpus: int | None = None, *,
               use_env: bool = True) -> GpuProfile:
    """Live NVML profile of the GPUs an sglang server would use; never raises.

    `visible` defaults to $CUDA_VISIBLE_DEVICES (pass `use_env=False` to see every GPU); `base_gpu_id`
    and `num_gpus` mirror sglang's --base-gpu-id/--num-gpus on top of it.
    """
    from .nvml_snapshot import NvmlUnavailable, read_nvml

    if visible is None and use_env:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        host = probe_host()
    except OSError:
        host = None
    try:
        raw = read_nvml()
    except NvmlUnavailable as e:
        return GpuProfile(devices=(), driver_version=None, host=host, source="none", no_gpu_reason=str(e))
    return _profile_from_raw(raw, visible=visible, base_gpu_id=base_gpu_id, num_gpus=num_gpus, source="nvml",
                             host=host, device_order=os.environ.get("CUDA_DEVICE_ORDER"))


# ----------------------------------------------------------------------------- snapshots

def _check_snapshot(raw: Any, where: str) -> None:
    if not isinstance(raw, Mapping):
        raise SnapshotError(f"{where}: expected a JSON object with a 'gpus' list, got {type(raw).__name__}.")
    gpus = raw.get("gpus")
    if not isinstance(gpus, list):
        raise SnapshotError(f"{where}: expected a 'gpus' list (an NVML snapshot), found {sorted(raw)}.")
    for i, g in enumerate(gpus):
        if not isinstance(g, Mapping):
            raise SnapshotError(f"{where}: gpus[{i}] is not an object.")
        if not isinstance(g.get("name"), str):
            raise SnapshotError(f"{where}: gpus[{i}] has no 'name' string.")
        for key in ("mem_total", "mem_free"):
            if _int(g.get(key)) is None:
                raise SnapshotError(f"{where}: gpus[{i}] ({g['name']}) has no integer '{key}' (bytes).")
        total, free = g["mem_total"], g["mem_free"]
        if total <= 0 or not 0 <= free <= total:
            raise SnapshotError(f"{where}: gpus[{i}] ({g['name']}) has mem_total {total}, mem_free {free}; "
                                "expected 0 <= mem_free <= mem_total and mem_total > 0 (bytes).")
    host = raw.get("host")
    if host is not None and not isinstance(host, Mapping):
        raise SnapshotError(f"{where}: 'host' must be an object.")


def _host_from_dict(d: Mapping[str, Any] | None, where: str) -> HostMemory | None:
    if d is None:
        return None
    fields = dataclasses.fields(HostMemory)
    missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in d]
    if missing:
        raise SnapshotError(f"{where}: 'host' is incomplete: no {', '.join(missing)}.")
    for f in fields:
        v = d.get(f.name)
        nullable = "None" in str(f.type)  # e.g. no cgroup limit
        if not ((nullable and v is None) or (_int(v) is not None and v >= 0)):
            raise SnapshotError(f"{where}: host.{f.name} is {v!r}; expected a non-negative integer (bytes)"
                                + (" or null." if nullable else "."))
    return HostMemory(**{f.name: d.get(f.name) for f in fields})


def _name_prefixes(stem: str) -> list[str]:
    """'rtx-4090-24gb' -> ['rtx', 'rtx4090', 'rtx409024gb']: the names a file answers to, in whole parts."""
    parts = [t for t in re.split(r"[-_ ]+", stem.lower()) if t]
    return ["".join(parts[:k]) for k in range(1, len(parts) + 1)]


def bundled_profiles() -> dict[str, Path]:
    """Bundled profiles by short name ('h200', 'rtx4090'): the shortest name no other file answers to."""
    prefixes = {p: _name_prefixes(p.stem) for p in sorted(DATASHEET_DIR.glob("*.json"))}
    out: dict[str, Path] = {}
    for path, names in prefixes.items():
        unique = [n for n in names if sum(n in other for other in prefixes.values()) == 1]
        out[unique[0] if unique else path.stem] = path
    return out


def bundled_profile_path(text: str) -> Path:
    """The snapshot `text` names: an existing path, else the one bundled profile whose file name starts
    with `text` in whole parts, case and dashes ignored ('H200', 'rtx-4090', 'a100'). Else SnapshotError."""
    if os.path.lexists(text) or os.sep in text or text.lower().endswith(".json"):
        return Path(text)  # a path: the snapshot reader says what is wrong with it
    want = (_name_prefixes(text) or [""])[-1]  # the whole name, dashes and case dropped
    hits = [p for p in sorted(DATASHEET_DIR.glob("*.json")) if want in _name_prefixes(p.stem)]
    if len(hits) == 1:
        return hits[0]
    names = ", ".join(sorted(bundled_profiles()))
    if hits:
        raise SnapshotError(f"{text!r} names {len(hits)} bundled GPU profiles; expected one of {names}")
    raise SnapshotError(f"{text!r}: no such file and no bundled GPU profile of that name; expected a "
                        f"snapshot file or one of {names}")


def profile_from_snapshot(snapshot: str | os.PathLike | Mapping[str, Any], visible: str | None = None,
                          base_gpu_id: int = 0, num_gpus: int | None = None) -> GpuProfile:
    """A GpuProfile from a recorded (or datasheet-written) NVML snapshot: a file path or its dict.

    Every GPU in the snapshot is visible unless `visible` says otherwise (the recording machine's
    CUDA_VISIBLE_DEVICES is not replayed). Raises SnapshotError for an unreadable snapshot.
    """
    if isinstance(snapshot, Mapping):
        raw, where, source = snapshot, "snapshot", "snapshot"
    else:
        where = str(snapshot)
        source = f"snapshot:{Path(snapshot).name}"
        raw = read_json_file(snapshot, SnapshotError, "a JSON NVML snapshot")
    _check_snapshot(raw, where)
    return _profile_from_raw(raw, visible=visible, base_gpu_id=base_gpu_id, num_gpus=num_gpus, source=source,
                             host=_host_from_dict(raw.get("host"), where), label=_str(raw.get("source")),
                             device_order="PCI_BUS_ID")


# ----------------------------------------------------------------------------- output

def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def gpu_profile_to_dict(profile: GpuProfile) -> dict:
    """JSON-ready dict of every field (tuples as lists), plus `has_gpu`."""
    d = _jsonable(dataclasses.asdict(profile))
    d["has_gpu"] = profile.has_gpu
    return d


def _link(gen: int | None, width: int | None) -> str:
    return "?" if gen is None and width is None else f"Gen{gen or '?'} x{width or '?'}"


def _nvlink_summary(d: GpuDevice) -> str:
    active = [p for p in d.nvlink if p.active]
    if not d.nvlink:
        return "-"
    peers = sorted({p.peer_index for p in active if p.peer_index is not None})
    kind = " switch" if any(p.remote_type == "switch" for p in active) else ""
    to = (" to " + ",".join(map(str, peers))) if peers else ""
    return f"{len(active)}/{len(d.nvlink)}{kind}{to}"


def format_gpu_table(profile: GpuProfile) -> str:
    """A readable table: memory in GiB, link rates in GB/s, tensor peak in TFLOP/s."""
    lines = []
    if not profile.has_gpu:
        lines.append(f"no GPU: {profile.no_gpu_reason}")
    else:
        head = ("GPU", "name", "free / total GiB", "PCIe max (now)", "H2D GB/s", "bf16 TFLOP/s", "cc",
                "power W", "NVLink", "procs")
        rows = [head]
        for d in profile.devices:
            cc = "?" if d.compute_capability is None else "%d.%d" % d.compute_capability
            rows.append((
                str(d.index), d.name, f"{gib(d.memory_free_bytes, unit=False)} / {gib(d.memory_total_bytes, unit=False)}",
                f"{_link(d.pcie_generation, d.pcie_width)} ({_link(d.pcie_current_generation, d.pcie_current_width)})",
                f"{d.h2d_bytes_per_s / 1e9:.1f}" if d.h2d_bytes_per_s else "?",
                f"{d.bf16_dense_flops / 1e12:.0f}" if d.bf16_dense_flops else "?",
                cc + (" MIG" if d.mig_enabled else ""),
                "?" if d.power_limit_w is None else f"{d.power_limit_w:.0f}",
                _nvlink_summary(d), str(len(d.processes)),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    h = profile.host
    if h is not None:
        lim = "none" if h.cgroup_limit_bytes is None else f"{gib(h.cgroup_limit_bytes)}"
        lines.append(f"host: RAM {gib(h.ram_total_bytes)}, available {gib(h.ram_available_bytes)}, "
                     f"cgroup limit {lim}, pinnable {gib(h.pinnable_bytes)}")
    src = profile.source + (f" ({profile.snapshot_label})" if profile.snapshot_label else "")
    lines.append(f"driver {profile.driver_version or '?'}; source {src}")
    lines += [f"warning: {w}" for w in profile.warnings]
    return "\n".join(lines)
