"""GpuProfile probe on the CPU: recorded and datasheet snapshots, and NVML replaced by a double
(NVML cannot exist on a machine without an NVIDIA driver)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from sglang_autoperf.probe import gpu as gpu_mod
from sglang_autoperf.probe import hardware, nvml_snapshot
from sglang_autoperf.probe import host as host_mod
from sglang_autoperf.probe.host import parse_cgroup_bytes, parse_meminfo, parse_memory_stat, read_cgroup_memory
from sglang_autoperf.probe.gpu import (
    GpuDevice, GpuProfile, SnapshotError, format_gpu_table, gpu_profile_to_dict, normalize_bus_id,
    parse_visible_devices, probe_gpus, profile_from_snapshot, select_devices,
)

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "tests/fixtures/nvml/nvml-h100-80gb-hbm3-2026-11-27.json"
BUNDLED = sorted(gpu_mod.DATASHEET_DIR.glob("*.json"))
# Written from vendor datasheets (they say so in a "datasheet" key); the others were recorded on the card.
DATASHEETS = [f for f in BUNDLED if "datasheet" in json.loads(f.read_text())]


# ----------------------------------------------------------------------------- snapshots

def test_recorded_h100_snapshot_exact():
    p = profile_from_snapshot(H100)
    assert p.has_gpu and p.source == "snapshot:" + H100.name
    assert p.snapshot_label.startswith("recorded on an H100 80GB HBM3 machine")
    assert p.driver_version == "580.159.04" and p.host is None and p.no_gpu_reason is None
    (d,) = p.devices
    assert (d.index, d.nvml_index, d.name, d.uuid) == (0, 0, "NVIDIA H100 80GB HBM3", "GPU-(removed)")
    assert d.compute_capability == (9, 0)
    assert (d.memory_total_bytes, d.memory_free_bytes) == (85520809984, 85017493504)
    assert (d.pcie_generation, d.pcie_width, d.pcie_current_generation, d.pcie_current_width) == (5, 16, 5, 16)
    assert d.power_limit_w == 700.0
    assert d.mig_enabled is None and d.nvlink == () and d.processes == () and d.pci_bus_id == ""
    assert d.h2d_bytes_per_s == 51e9 and d.bf16_dense_flops == 989e12


EXPECTED_DATASHEET = {  # file stem: (name, cc, GiB, gen, width, H2D GB/s, bf16 TFLOP/s, W)
    "a100-sxm4-80gb": ("NVIDIA A100-SXM4-80GB", (8, 0), 80, 4, 16, 25, 312, 400),
    "l40s-48gb": ("NVIDIA L40S", (8, 9), 48, 4, 16, 25, 362, 350),
    "rtx-4090-24gb": ("NVIDIA GeForce RTX 4090", (8, 9), 24, 4, 16, 25, 165, 450),
    "rtx-5090-32gb": ("NVIDIA GeForce RTX 5090", (12, 0), 32, 5, 16, 51, 209, 575),
    "b200-180gb": ("NVIDIA B200", (10, 0), 180, 5, 16, 51, 2250, 1000),
}


def test_datasheet_set_is_complete():
    assert {f.stem for f in DATASHEETS} == set(EXPECTED_DATASHEET)


@pytest.mark.parametrize("path", DATASHEETS, ids=lambda f: f.stem)
def test_datasheet_profiles_load(path):
    p = profile_from_snapshot(path)
    assert p.snapshot_label == "written from the vendor datasheet, not recorded"
    (d,) = p.devices
    name, cc, gib, gen, width, h2d, tflops, watts = EXPECTED_DATASHEET[path.stem]
    assert (d.name, d.compute_capability, d.pcie_generation, d.pcie_width) == (name, cc, gen, width)
    assert d.memory_total_bytes == gib * 2**30 and 0 < d.memory_free_bytes < d.memory_total_bytes
    assert d.h2d_bytes_per_s == h2d * 1e9 and d.bf16_dense_flops == tflops * 1e12
    assert d.power_limit_w == watts
    assert set(json.loads(path.read_text())["datasheet"]) >= {"memory", "pcie", "bf16"}


# The recorded snapshots shipped in the package: the same bytes as the test fixtures they were copied from.
BUNDLED_RECORDINGS = {
    "h100-80gb-hbm3-recorded-2026-11-27": H100,
    "h200-141gb-2x-recorded-2026-11-27": ROOT / "tests/fixtures/nvml/nvml-2x-h200-141gb-2026-11-27.json",
}


def test_bundled_set_is_the_datasheets_and_the_recordings():
    assert {f.stem for f in BUNDLED} == set(EXPECTED_DATASHEET) | set(BUNDLED_RECORDINGS)


@pytest.mark.parametrize("stem", sorted(BUNDLED_RECORDINGS))
def test_bundled_recordings_keep_their_source_label(stem):
    shipped = gpu_mod.DATASHEET_DIR / f"{stem}.json"
    assert shipped.read_bytes() == BUNDLED_RECORDINGS[stem].read_bytes()
    assert profile_from_snapshot(shipped).snapshot_label.startswith("recorded on ")


@pytest.mark.parametrize("name, stem", [
    ("h100", "h100-80gb-hbm3-recorded-2026-11-27"), ("H200", "h200-141gb-2x-recorded-2026-11-27"),
    ("a100", "a100-sxm4-80gb"), ("A100-SXM4", "a100-sxm4-80gb"), ("l40s", "l40s-48gb"),
    ("rtx4090", "rtx-4090-24gb"), ("RTX-5090", "rtx-5090-32gb"), ("b200", "b200-180gb"),
])
def test_bundled_profiles_are_found_by_name(name, stem):
    assert gpu_mod.bundled_profile_path(name) == gpu_mod.DATASHEET_DIR / f"{stem}.json"


def test_bundled_profile_names_are_the_short_ones():
    assert sorted(gpu_mod.bundled_profiles()) == ["a100", "b200", "h100", "h200", "l40s", "rtx4090", "rtx5090"]


@pytest.mark.parametrize("name, match", [("rtx", "names 2 bundled GPU profiles"), ("h300", "no such file"),
                                         ("a1", "no such file")])
def test_a_name_that_is_not_one_profile_says_so(name, match):
    with pytest.raises(SnapshotError, match=match):
        gpu_mod.bundled_profile_path(name)


def test_an_existing_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "h200").write_text("{}")
    assert gpu_mod.bundled_profile_path("h200") == Path("h200")


def test_sandbox_format_unavailable_strings_read_as_none():
    raw = json.loads(H100.read_text())
    raw["gpus"][0].update(pcie_cur_gen="unavailable: Not Supported", power_limit_mw="unavailable: Not Supported",
                          mig_mode="unavailable: Not Supported", pci_bus_id="00000000:18:00.0")
    (d,) = profile_from_snapshot(raw).devices
    assert d.pcie_current_generation is None and d.power_limit_w is None and d.mig_enabled is None
    assert d.pci_bus_id == "00000000:18:00.0" and d.pcie_generation == 5


@pytest.mark.parametrize("content, match", [
    (None, "cannot read"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"driver": "x"}', "'gpus' list"),
    ('{"gpus": [{"name": "X"}]}', "mem_total"),
    ('{"gpus": [{"mem_total": 1, "mem_free": 1}]}', "'name'"),
    ('{"gpus": [], "host": 3}', "'host'"),
    ('{"gpus": [], "host": {"ram_total_bytes": 1}}', "host"),
])
def test_bad_snapshot_is_a_clear_error(tmp_path, content, match):
    f = tmp_path / "snap.json"
    if content is not None:
        f.write_text(content)
    with pytest.raises(SnapshotError, match=match) as e:
        profile_from_snapshot(f)
    assert str(f) in str(e.value)


def test_snapshot_with_no_gpu_and_selection():
    assert profile_from_snapshot({"gpus": []}).no_gpu_reason == "NVML sees no GPU on this machine."
    p = profile_from_snapshot(H100, visible="-1")
    assert not p.has_gpu and "'-1'" in p.no_gpu_reason
    p = profile_from_snapshot(H100, base_gpu_id=1)
    assert not p.has_gpu and "--base-gpu-id 1" in p.no_gpu_reason


# ----------------------------------------------------------------------------- GPU selection

UUIDS = ["GPU-aaaa1111", "GPU-aaaa2222", "GPU-bbbb3333", "GPU-cccc4444"]


@pytest.mark.parametrize("visible, expect, cut", [
    (None, (0, 1, 2, 3), False),
    ("", (), True),
    ("  ", (), True),
    ("-1", (), True),
    ("2,0", (2, 0), False),
    (" 3 , 1 ", (3, 1), False),
    ("0,7,1", (0,), True),  # CUDA stops at the first invalid entry
    ("1,1", (1,), True),
    ("GPU-bbbb", (2,), False),
    ("gpu-cccc4444,GPU-aaaa1", (3, 0), False),
    ("GPU-aaaa", (), True),  # ambiguous prefix
    ("GPU-dddd", (), True),
    ("1,MIG-GPU-aaaa1111/1/0", (1,), True),
    ("0,foo,1", (0,), True),
])
def test_parse_visible_devices(visible, expect, cut):
    got, note = parse_visible_devices(visible, UUIDS)
    assert got == expect
    assert (note is not None) == cut


@pytest.mark.parametrize("n, base, num, expect, noted", [
    (4, 0, None, (0, 1, 2, 3), False),
    (4, 0, 1, (0,), False),
    (4, 2, 2, (2, 3), False),
    (4, 3, 2, (3,), True),
    (4, 4, 1, (), True),
    (2, -1, None, (), True),
    (2, 0, 0, (), True),
])
def test_select_devices(n, base, num, expect, noted):
    got, note = select_devices(n, base, num)
    assert got == expect and (note is not None) == noted


def test_base_gpu_id_keeps_cuda_ordinals():
    raw = json.loads(H100.read_text())
    raw["gpus"] = [dict(raw["gpus"][0], index=i, uuid=f"GPU-{i}000") for i in range(3)]
    p = profile_from_snapshot(raw, visible="2,0,1", base_gpu_id=1, num_gpus=2)
    assert [(d.index, d.nvml_index) for d in p.devices] == [(1, 0), (2, 1)]


def test_normalize_bus_id():
    assert normalize_bus_id("0000:18:00.0") == "00000000:18:00.0"
    assert normalize_bus_id("00000000:c1:00.1") == "00000000:C1:00.1"
    assert normalize_bus_id(None) == ""


# ----------------------------------------------------------------------------- host memory

MEMINFO = "MemTotal:       24684096 kB\nMemFree:        11831924 kB\nMemAvailable:   23798308 kB\nHugePages_Total:       0\n"


def test_parse_meminfo():
    m = parse_meminfo(MEMINFO)
    assert m["MemTotal"] == 24684096 * 1024 and m["MemAvailable"] == 23798308 * 1024
    assert m["HugePages_Total"] == 0


def test_parse_cgroup_values():
    assert parse_cgroup_bytes("max\n") is None
    assert parse_cgroup_bytes("9223372036854771712\n") is None  # v1 "no limit"
    assert parse_cgroup_bytes("17179869184\n") == 16 * 2**30
    assert parse_memory_stat("anon 10\ninactive_file 778240\nfile 5\n")["inactive_file"] == 778240


def _write(d: Path, **files):
    d.mkdir(parents=True, exist_ok=True)
    for k, v in files.items():
        (d / k.replace("__", ".")).write_text(v)


def test_cgroup_v2_nested_tightest_limit(tmp_path):
    G = 2**30
    _write(tmp_path / "user.slice", memory__max=str(8 * G), memory__current=str(2 * G), memory__stat="inactive_file 0\n")
    _write(tmp_path / "user.slice/job", memory__max=str(16 * G), memory__current=str(2 * G),
           memory__stat=f"inactive_file {G}\n")
    limit, room = read_cgroup_memory(tmp_path, "0::/user.slice/job\n")
    assert limit == 8 * G and room == 6 * G  # parent binds; child's room would be 15 GiB


def test_cgroup_v1_page_cache_counts_as_room(tmp_path):
    G = 2**30
    _write(tmp_path / "memory", memory__limit_in_bytes="9223372036854771712", memory__usage_in_bytes="0")
    _write(tmp_path / "memory/docker/abc", memory__limit_in_bytes=str(32 * G), memory__usage_in_bytes=str(30 * G),
           memory__stat=f"cache {20 * G}\ntotal_inactive_file {18 * G}\n")
    limit, room = read_cgroup_memory(tmp_path, "4:memory:/docker/abc\n0::/\n")
    assert limit == 32 * G and room == 20 * G


def test_no_cgroup(tmp_path):
    assert read_cgroup_memory(tmp_path, "0::/\n") == (None, None)


def test_probe_host_pinnable_is_min_of_available_and_cgroup(tmp_path):
    G = 2**30
    mi = tmp_path / "meminfo"
    mi.write_text(MEMINFO)
    _write(tmp_path / "cg", memory__max=str(4 * G), memory__current=str(G))
    h = host_mod.probe_host(tmp_path / "cg", mi)
    assert h.cgroup_limit_bytes == 4 * G and h.cgroup_headroom_bytes == 3 * G and h.pinnable_bytes == 3 * G
    h = host_mod.probe_host(tmp_path / "none", mi)
    assert h.cgroup_limit_bytes is None and h.pinnable_bytes == 23798308 * 1024


# ----------------------------------------------------------------------------- live path, NVML doubled

def test_no_pynvml_gives_a_profile(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    p = probe_gpus()
    assert not p.has_gpu and p.source == "none" and "pynvml" in p.no_gpu_reason


class FakeNVMLError(Exception):
    def __init__(self, value):
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_nvml(gpus=(), init_error=None, calls=None):
    """A pynvml double: `gpus` is a list of dicts of raw values; a value that is an int error code raises."""
    calls = calls if calls is not None else []
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_ERROR_NOT_SUPPORTED, m.NVML_ERROR_NO_PERMISSION = 3, 4
    m.NVML_ERROR_DRIVER_NOT_LOADED, m.NVML_ERROR_LIBRARY_NOT_FOUND = 9, 12
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM, m.NVML_NVLINK_MAX_LINKS = 1, 2, 18

    def init():
        calls.append("init")
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def val(key):
        def f(h, *a):
            v = gpus[h][key]
            if isinstance(v, FakeNVMLError):
                raise v
            return v(*a) if callable(v) else v
        return f

    m.nvmlInit = init
    m.nvmlShutdown = lambda: calls.append("shutdown")
    m.nvmlSystemGetDriverVersion = lambda: "999.1"
    m.nvmlSystemGetNVMLVersion = lambda: "13.999.1"
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    for fn, key in [("Name", "name"), ("UUID", "uuid"), ("PciInfo", "pci"), ("CudaComputeCapability", "cc"),
                    ("MemoryInfo", "mem"), ("MaxPcieLinkGeneration", "gen"), ("MaxPcieLinkWidth", "width"),
                    ("CurrPcieLinkGeneration", "cur_gen"), ("CurrPcieLinkWidth", "cur_width"),
                    ("MaxClockInfo", "clock"), ("PowerManagementLimit", "power"), ("MigMode", "mig"),
                    ("ComputeRunningProcesses", "procs"), ("NvLinkState", "nvl_state"),
                    ("NvLinkRemotePciInfo", "nvl_peer"), ("NvLinkRemoteDeviceType", "nvl_type")]:
        setattr(m, f"nvmlDeviceGet{fn}", val(key))
    return m


NS = FakeNVMLError(3)  # NVML_ERROR_NOT_SUPPORTED


def _gpu(i, bus, uuid, peer_bus=None, **over):
    ns = types.SimpleNamespace
    links = 4 if peer_bus else 0

    def state(link):
        if link >= links:
            raise FakeNVMLError(3)
        return 1 if link < 3 else 0  # 3 of 4 links up

    # free below total, as NVML reports it (a snapshot with free > total is refused)
    g = dict(name=b"NVIDIA H100 80GB HBM3", uuid=uuid, pci=ns(busId=bus), cc=(9, 0),
             mem=ns(total=85520809984, free=79 * 2**30), gen=5, width=16, cur_gen=1, cur_width=16,
             clock=lambda t: 1980, power=700000, mig=(0, 0),
             procs=[ns(pid=100 + i, usedGpuMemory=2**30), ns(pid=7, usedGpuMemory=None)],
             nvl_state=state, nvl_peer=lambda link: ns(busId=peer_bus), nvl_type=lambda link: 0)
    g.update(over)
    return g


TWO = [_gpu(0, "00000000:18:00.0", "GPU-a0", peer_bus="00000000:2A:00.0"),
       _gpu(1, "00000000:2a:00.0", "GPU-b1", peer_bus="0000:18:00.0", power=NS, mig=NS, procs=NS, cur_gen=NS)]


def test_nvml_init_failures_give_a_reason(monkeypatch):
    for code, words in [(12, "no NVIDIA driver"), (9, "not loaded"), (4, "permission"), (999, "failed to start")]:
        calls = []
        monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(TWO, init_error=code, calls=calls))
        p = probe_gpus()
        assert not p.has_gpu and p.source == "none" and words in p.no_gpu_reason, p.no_gpu_reason


def test_zero_devices(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([], calls=calls))
    p = probe_gpus(use_env=False)
    assert not p.has_gpu and p.no_gpu_reason == "NVML sees no GPU on this machine." and p.driver_version == "999.1"
    assert calls == ["init", "shutdown"]


def test_live_probe_two_gpus_nvlink_and_unsupported_fields(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(TWO, calls=calls))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    p = probe_gpus()
    assert calls == ["init", "shutdown"] and p.source == "nvml" and p.driver_version == "999.1"
    a, b = p.devices
    assert a.name == "NVIDIA H100 80GB HBM3" and a.pci_bus_id == "00000000:18:00.0"
    assert a.pcie_current_generation == 1 and a.pcie_generation == 5 and a.h2d_bytes_per_s == 51e9
    assert a.power_limit_w == 700.0 and a.mig_enabled is False
    assert [(q.pid, q.used_bytes) for q in a.processes] == [(100, 2**30), (7, None)]
    assert [(l.link, l.active, l.peer_index, l.remote_type) for l in a.nvlink] == [
        (0, True, 1, "gpu"), (1, True, 1, "gpu"), (2, True, 1, "gpu"), (3, False, None, None)]
    assert b.nvlink[0].peer_index == 0 and b.nvlink[0].peer_bus_id == "00000000:18:00.0"
    assert (b.power_limit_w, b.mig_enabled, b.processes, b.pcie_current_generation) == (None, None, (), None)
    assert p.nvlink_connected(0, 1) and not p.nvlink_connected(0, 0)

    # Only GPU 1 visible: it becomes cuda:0 and its NVLink peer is no longer in the profile.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b")
    (only,) = probe_gpus().devices
    assert (only.index, only.nvml_index, only.uuid) == (0, 1, "GPU-b1")
    assert all(l.peer_index is None for l in only.nvlink)


def test_nvswitch_peers(monkeypatch):
    gpus = [_gpu(i, f"00000000:{0x18 + i:02X}:00.0", f"GPU-{i}", peer_bus="00000000:C0:00.0",
                 nvl_type=lambda link: 2) for i in range(2)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(gpus))
    p = probe_gpus(use_env=False)
    assert all(l.peer_index is None for d in p.devices for l in d.nvlink)
    assert p.nvlink_connected(0, 1)


def test_recorder_snapshot_replays_like_the_live_probe(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(TWO))
    live = probe_gpus(use_env=False)
    snap = nvml_snapshot.record_snapshot()
    assert snap["format"] == nvml_snapshot.SNAPSHOT_FORMAT and "2x NVIDIA H100 80GB HBM3" in snap["source"]
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(snap))  # must be plain JSON
    replay = profile_from_snapshot(f)
    assert replay.devices == live.devices
    assert replay.host is not None and replay.snapshot_label == snap["source"]


def test_recorder_cli_without_nvml(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert nvml_snapshot.main() == 1
    assert "pynvml" in capsys.readouterr().err


def test_mixed_gpus_warn_about_cuda_order(monkeypatch):
    gpus = [_gpu(0, "00000000:18:00.0", "GPU-0"), _gpu(1, "00000000:19:00.0", "GPU-1", name="NVIDIA L40S")]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(gpus))
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert any("CUDA_DEVICE_ORDER" in w for w in probe_gpus(use_env=False).warnings)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert probe_gpus(use_env=False).warnings == ()


# ----------------------------------------------------------------------------- derived rates

def _dev(name="X", cc=(9, 0), gen=5, width=16):
    return GpuDevice(index=0, name=name, uuid="", pci_bus_id="", compute_capability=cc, memory_total_bytes=1,
                     memory_free_bytes=1, pcie_generation=gen, pcie_width=width, pcie_current_generation=None,
                     pcie_current_width=None, power_limit_w=None, mig_enabled=None)


def test_h2d_rates():
    assert hardware.expected_h2d_bytes_per_s(_dev(gen=4, width=8)) == 12.5e9
    assert hardware.expected_h2d_bytes_per_s(_dev(gen=3)) == 12.5e9
    assert hardware.expected_h2d_bytes_per_s(_dev(gen=None)) == 0.0
    assert hardware.expected_h2d_bytes_per_s(_dev("NVIDIA GH200 480GB", gen=5)) == 350e9


def test_bf16_rates():
    f = hardware.bf16_dense_flops
    assert f(_dev("NVIDIA H100 PCIe")) == 756e12 and f(_dev("NVIDIA H100 80GB HBM3")) == 989e12
    assert f(_dev("NVIDIA H200")) == 989e12 and f(_dev("NVIDIA H20")) == 148e12
    assert f(_dev("NVIDIA GB200")) == 2500e12 and f(_dev("NVIDIA L4", (8, 9))) == 121e12
    assert f(_dev("NVIDIA RTX A1000", (8, 6))) == 71e12  # not an A100
    assert f(_dev("Future GPU", (10, 0))) == 2250e12 and f(_dev("Old", (7, 0))) == 0.0 and f(_dev(cc=None)) == 0.0


# ----------------------------------------------------------------------------- output

def test_to_dict_is_json_and_named_as_agreed():
    p = profile_from_snapshot(H100)
    d = json.loads(json.dumps(gpu_profile_to_dict(p)))
    dev = d["devices"][0]
    for k in ("name", "memory_total_bytes", "memory_free_bytes", "pcie_generation", "pcie_width",
              "pcie_current_generation", "pcie_current_width", "compute_capability", "nvlink", "processes",
              "h2d_bytes_per_s", "bf16_dense_flops"):
        assert k in dev
    assert dev["compute_capability"] == [9, 0] and dev["h2d_bytes_per_s"] == 51e9
    for k in ("driver_version", "host", "source", "no_gpu_reason"):
        assert k in d
    assert d["has_gpu"] is True


def test_format_table():
    t = format_gpu_table(profile_from_snapshot(H100))
    assert "NVIDIA H100 80GB HBM3" in t and "79.2 / 79.6" in t and "Gen5 x16" in t and "51.0" in t and "989" in t
    t = format_gpu_table(GpuProfile(devices=(), driver_version=None, host=None, source="none",
                                    no_gpu_reason="NVML sees no GPU on this machine."))
    assert t.startswith("no GPU: NVML sees no GPU")


H200 = ROOT / "tests/fixtures/nvml/nvml-h200-141gb-2026-11-27.json"


def test_recorded_h200_snapshot():
    """Recorded by `python -m sglang_autoperf.probe.nvml_snapshot` on the GPU machine (H200, 2026-11-27);
    on the same call nvidia-smi agreed and a pinned 256 MiB copy measured 55.2 GB/s (derived: 51.0)."""
    p = profile_from_snapshot(H200)
    assert p.snapshot_label.startswith("recorded on 1x NVIDIA H200, 2026-11-27")
    (d,) = p.devices
    assert d.name == "NVIDIA H200" and d.compute_capability == (9, 0)
    assert d.memory_total_bytes == 150754820096  # 140.4 GiB
    assert (d.pcie_generation, d.pcie_width) == (5, 16)
    measured_h2d = 55.2e9
    assert abs(d.h2d_bytes_per_s - measured_h2d) / measured_h2d < 0.15


H200X2 = ROOT / "tests/fixtures/nvml/nvml-2x-h200-141gb-2026-11-27.json"


def test_recorded_two_gpu_snapshot():
    """Recorded by `python -m sglang_autoperf.probe.nvml_snapshot` on a 2-GPU machine (2x H200,
    2026-11-27; UUIDs removed). nvidia-smi topo showed NV18 between the two: 18 active links each,
    all to the NVSwitch fabric, so each GPU is the other's NVLink peer through the switch."""
    p = profile_from_snapshot(H200X2)
    assert p.snapshot_label.startswith("recorded on 2x NVIDIA H200, 2026-11-27")
    a, b = p.devices
    assert (a.index, b.index) == (0, 1) and a.name == b.name == "NVIDIA H200"
    assert a.memory_total_bytes == b.memory_total_bytes == 150754820096
    assert sum(link.active for link in a.nvlink) == 18 and all(link.remote_type == "switch" for link in a.nvlink)
    assert p.nvlink_connected(0, 1) and not p.nvlink_connected(0, 0)
    table = format_gpu_table(p)
    rows = [ln for ln in table.splitlines() if ln[:1].isdigit()]
    assert [ln.split()[0] for ln in rows] == ["0", "1"] and all("NVIDIA H200" in ln and "18/18 switch" in ln for ln in rows)


def test_two_gpu_snapshot_respects_visible_devices_and_num_gpus():
    only_second = profile_from_snapshot(H200X2, visible="1")
    (d,) = only_second.devices
    assert d.pci_bus_id.endswith("00:07.0")
    second_via_base = profile_from_snapshot(H200X2, base_gpu_id=1, num_gpus=1)
    assert [x.pci_bus_id for x in second_via_base.devices] == [d.pci_bus_id]
    assert len(profile_from_snapshot(H200X2, num_gpus=2).devices) == 2
