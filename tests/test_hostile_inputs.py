"""Hostile inputs to the CLI and the startup probe (issue 14, finding 5): one table, input -> rc and
message. Every bad input ends in rc 2 with one line on stderr naming the file/field, never a
traceback, a silent wrong answer or a hang. Model folders are built in tmp_path from the published
configs in tests/fixtures/models, with small (sparse) safetensors files so that no weight loads
and no torch import is needed."""
from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from sglang_autoperf.cli import main
from sglang_autoperf.probe.model import ModelProbeError, probe_model

FIXTURES = Path(__file__).parent / "fixtures"
WAN = FIXTURES / "models" / "Wan2.1-T2V-14B-Diffusers"
H200 = FIXTURES / "nvml" / "nvml-h200-141gb-2026-11-27.json"
# The fixed code answers each hang case in seconds; `plan` imports sglang's model registry (14 s on an
# idle 2-core box, 56 s on a loaded one: 2026-11-29)
HANG_TIMEOUT_S = 120


# ---- building hostile inputs ---------------------------------------------------------------------

def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _entries(tensors: dict[str, tuple[str, list[int]]]) -> tuple[dict, int]:
    """A well-formed header for (dtype, shape) tensors, laid out back to back; and the data size."""
    size = {"BF16": 2, "F32": 4}
    header, at = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = size[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + n]}
        at += n
    return header, at


def write_safetensors(path: Path, header: dict, data_bytes: int) -> None:
    """A safetensors file whose data section is a hole (sparse): big shapes cost no disk."""
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + data_bytes)


def _dit_tensors(blocks: int) -> dict:
    t = {"patch_embedding.weight": ("BF16", [5120, 16, 1, 2, 2])}
    for i in range(blocks):
        t[f"blocks.{i}.ffn.net.0.proj.weight"] = ("BF16", [13824, 5120])
    return t


def wan_model(tmp: Path, blocks: int = 4, dit_config=None, vae_config=None, dit_header=None) -> Path:
    """A Wan2.1-T2V-14B-shaped folder: the published configs, a DiT and a VAE with headers."""
    root = tmp / "Wan2.1-T2V-14B-Diffusers"
    _write_json(root / "model_index.json", {
        "_class_name": "WanPipeline", "_diffusers_version": "0.33.0.dev0",
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]})
    dit_cfg = json.loads((WAN / "transformer" / "config.json").read_text())
    vae_cfg = json.loads((WAN / "vae" / "config.json").read_text())
    _write_json(root / "transformer" / "config.json", {**dit_cfg, "num_layers": blocks, **(dit_config or {})})
    _write_json(root / "vae" / "config.json", {**vae_cfg, **(vae_config or {})})
    header, size = _entries(_dit_tensors(blocks))
    if dit_header is not None:
        header = dit_header(header)
    write_safetensors(root / "transformer" / "diffusion_pytorch_model.safetensors", header, size)
    vae_header, vae_size = _entries({"decoder.conv_out.weight": ("F32", [3, 96, 3, 3, 3])})
    write_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", vae_header, vae_size)
    return root


def snapshot(tmp: Path, gpu=None, host=None) -> Path:
    raw = json.loads(H200.read_text())
    raw["gpus"][0].update(gpu or {})
    raw["host"].update(host or {})
    path = tmp / "snapshot.json"
    _write_json(path, raw)
    return path


def probe_args(model: Path) -> list[str]:
    return ["probe", "--model-path", str(model), "--gpu-snapshot", str(H200)]


def plan_args(model: Path, *extra: str, snap: Path = H200) -> list[str]:
    return ["plan", "--model-path", str(model), "--gpu-snapshot", str(snap), *extra]


def _set_entry(name: str, **fields) -> Callable[[dict], dict]:
    def mutate(header: dict) -> dict:
        header[name] = {**header[name], **fields}
        return header
    return mutate


def _deep_header(tmp: Path) -> Path:
    m = wan_model(tmp)
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    f = m / "transformer" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(struct.pack("<Q", len(deep)) + deep)
    return m


def _sharded(tmp: Path, shard: str) -> Path:
    m = wan_model(tmp)
    outside = tmp / "outside.safetensors"
    shutil.copy(m / "transformer" / "diffusion_pytorch_model.safetensors", outside)
    (m / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    names = json.loads(outside.read_bytes()[8:8 + struct.unpack("<Q", outside.read_bytes()[:8])[0]])
    _write_json(m / "transformer" / "diffusion_pytorch_model.safetensors.index.json",
                {"metadata": {}, "weight_map": {k: shard.format(outside=outside) for k in names}})
    return m


def _component_outside(tmp: Path, key: str) -> Path:
    m = wan_model(tmp)
    (tmp / "elsewhere").mkdir()
    shutil.copytree(m / "vae", tmp / "elsewhere" / "vae")
    index = json.loads((m / "model_index.json").read_text())
    index[key.format(tmp=tmp)] = ["diffusers", "AutoencoderKLWan"]
    _write_json(m / "model_index.json", index)
    return m


def _symlinked_component(tmp: Path) -> Path:
    m = wan_model(tmp)
    shutil.move(str(m / "transformer"), str(tmp / "dit-elsewhere"))
    (m / "transformer").symlink_to(tmp / "dit-elsewhere", target_is_directory=True)
    return m


def _fifo_shard(tmp: Path) -> Path:
    m = wan_model(tmp)
    f = m / "transformer" / "diffusion_pytorch_model.safetensors"
    f.unlink()
    os.mkfifo(f)
    return m


def _no_transformer(tmp: Path) -> Path:
    m = wan_model(tmp)
    shutil.rmtree(m / "transformer")
    return m


def _config_only(tmp: Path, config: dict) -> Path:
    """The DiT without weights (built from its config on the meta device), config updated."""
    m = wan_model(tmp)
    (m / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    cfg = json.loads((m / "transformer" / "config.json").read_text())
    _write_json(m / "transformer" / "config.json", {**cfg, **config})
    return m


def _nested(levels: int):
    return [] if levels == 0 else [_nested(levels - 1)]


# ---- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # builds the input in tmp_path, returns the CLI arguments
    fragment: str  # expected in the one stderr line (rc 2) or in stdout (rc 0)
    rc: int = 2
    hang: bool = False  # run in a child process with a timeout and a memory cap
    in_model: bool = False  # the fault is in the model folder: the startup probe must refuse it too


def ModelCase(*args, **kw) -> Case:  # noqa: N802 - a row constructor, read like Case
    return Case(*args, in_model=True, **kw)


CASES = [
    # config fields of wrong type or zero (were tracebacks or silent zeros)
    ModelCase("heads-string", lambda t: probe_args(wan_model(t, dit_config={"num_attention_heads": "forty"})),
         "num_attention_heads"),
    ModelCase("heads-zero", lambda t: probe_args(wan_model(t, dit_config={"num_attention_heads": 0})),
         "num_attention_heads"),
    ModelCase("patch-string", lambda t: probe_args(wan_model(t, dit_config={"patch_size": "2x2"})), "patch_size"),
    ModelCase("patch-zero", lambda t: plan_args(wan_model(t, dit_config={"patch_size": [1, 0, 0]})), "patch_size"),
    ModelCase("in-channels-string", lambda t: probe_args(wan_model(t, dit_config={"in_channels": "16"})),
         "in_channels"),
    ModelCase("in-channels-zero", lambda t: probe_args(wan_model(t, dit_config={"in_channels": 0})), "in_channels"),
    ModelCase("vae-z-dim-string", lambda t: probe_args(wan_model(t, vae_config={"z_dim": "sixteen"})), "z_dim"),
    ModelCase("vae-z-dim-zero", lambda t: probe_args(wan_model(t, vae_config={"z_dim": 0})), "z_dim"),
    # JSON files and layer counts (bounded before anything is built)
    ModelCase("config-40-levels-deep", lambda t: probe_args(wan_model(t, dit_config={"x": _nested(40)})),
              "deeper than 32"),
    ModelCase("config-17-MiB", lambda t: probe_args(wan_model(t, dit_config={"x": "y" * 17 * 2**20})),
              "larger than"),
    ModelCase("config-nested-layer-count", lambda t: probe_args(_config_only(
        t, {"text_config": {"num_hidden_layers": 100_000}})), "num_hidden_layers is 100000"),
    # safetensors headers
    ModelCase("deep-header", lambda t: probe_args(_deep_header(t)), "nested too deeply"),
    ModelCase("empty-header", lambda t: probe_args(wan_model(t, dit_header=lambda h: {})), "the tensors cover 0 of"),  # data but no tensor: not a safetensors file
    ModelCase("unknown-dtype", lambda t: probe_args(wan_model(
        t, dit_header=_set_entry("blocks.0.ffn.net.0.proj.weight", dtype="F12"))), "dtype 'F12'"),
    ModelCase("negative-offsets", lambda t: probe_args(wan_model(
        t, dit_header=_set_entry("blocks.0.ffn.net.0.proj.weight", data_offsets=[-8, 0]))), "data_offsets"),
    ModelCase("shape-beyond-file", lambda t: probe_args(wan_model(
        t, dit_header=_set_entry("blocks.1.ffn.net.0.proj.weight", shape=[13824, 5120, 1000]))),
         "shape [13824, 5120, 1000]"),
    ModelCase("shape-string-dims", lambda t: probe_args(wan_model(
        t, dit_header=_set_entry("blocks.1.ffn.net.0.proj.weight", shape=["13824", 5120]))), "shape"),
    ModelCase("overlapping-tensors", lambda t: probe_args(wan_model(
        t, dit_header=_set_entry("blocks.1.ffn.net.0.proj.weight", data_offsets=[163840, 163840 + 141557760]))),
         "overlaps"),
    ModelCase("no-transformer", lambda t: plan_args(_no_transformer(t)), "transformer"),
    # paths leaving the model folder
    ModelCase("shard-dotdot", lambda t: probe_args(_sharded(t, "../../outside.safetensors")), "outside"),
    ModelCase("shard-absolute", lambda t: probe_args(_sharded(t, "{outside}")), "outside"),
    ModelCase("component-dotdot", lambda t: probe_args(_component_outside(t, "../elsewhere/vae")), "outside"),
    ModelCase("component-absolute", lambda t: probe_args(_component_outside(t, "{tmp}/elsewhere/vae")), "outside"),
    ModelCase("component-symlink-out", lambda t: probe_args(_symlinked_component(t)), "outside"),
    # plan arguments
    Case("width-negative", lambda t: plan_args(wan_model(t), "--width", "-64"), "--width"),
    Case("width-zero", lambda t: plan_args(wan_model(t), "--width", "0"), "--width"),
    Case("steps-zero", lambda t: plan_args(wan_model(t), "--steps", "0"), "--steps"),
    Case("frames-zero", lambda t: plan_args(wan_model(t), "--num-frames", "0"), "--num-frames"),
    Case("num-gpus-negative", lambda t: plan_args(wan_model(t), "--num-gpus", "-2"), "--num-gpus"),
    Case("num-gpus-beyond-snapshot", lambda t: plan_args(wan_model(t), "--num-gpus", "64"), "1 GPU"),
    # budgets
    Case("budget-310-digits", lambda t: plan_args(wan_model(t), "--vram-budget", "9" * 310 + "GiB"),
         "VRAM budget"),
    Case("budget-fraction-rounds-to-0", lambda t: plan_args(wan_model(t), "--vram-budget", "0.000000000001"),
         "0 bytes"),
    # GPU snapshots
    Case("snapshot-host-strings", lambda t: plan_args(wan_model(t), snap=snapshot(
        t, host={"ram_total_bytes": "lots", "pinnable_bytes": "all"})), "host"),
    Case("snapshot-memory-negative", lambda t: plan_args(wan_model(t), snap=snapshot(
        t, gpu={"mem_free": -5})), "mem_free"),
    Case("snapshot-memory-zero", lambda t: plan_args(wan_model(t), snap=snapshot(
        t, gpu={"mem_total": 0, "mem_free": 0})), "mem_total"),
    Case("snapshot-free-over-total", lambda t: plan_args(wan_model(t), snap=snapshot(
        t, gpu={"mem_free": 2 * 150754820096})), "mem_free"),
    # unbounded before sglang starts (were hangs)
    ModelCase("fifo-safetensors", lambda t: probe_args(_fifo_shard(t)), "not a regular file", hang=True),
    Case("dev-zero-snapshot", lambda t: plan_args(wan_model(t), snap=Path("/dev/zero")),
         "not a regular file", hang=True),
    ModelCase("config-100000-layers", lambda t: probe_args(_config_only(t, {"num_layers": 100_000})), "100000",
              hang=True),
    Case("1000-blocks-plan", lambda t: plan_args(wan_model(t, blocks=1000), "--json"),
         '"total_layers": 1000', rc=0, hang=True),
]


def _limit_child() -> None:
    # A regression reading /dev/zero must fail with MemoryError, not take the machine's memory; 8 GiB
    # of address space: importing sglang's model registry maps ~4.4 GiB (2026-11-29)
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))


_CLI = "import sys; from sglang_autoperf.cli import main; sys.exit(main(sys.argv[1:]))"


def _run_child(argv: list[str], code: str = _CLI, args: list[str] | None = None) -> tuple[int, str, str]:
    try:
        proc = subprocess.run([sys.executable, "-c", code, *(argv if args is None else args)], capture_output=True, text=True,
                              timeout=HANG_TIMEOUT_S, preexec_fn=_limit_child)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {HANG_TIMEOUT_S} s")
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cli_hostile_input(case, tmp_path, capsys):
    argv = case.argv(tmp_path)
    if case.hang:
        rc, out, err = _run_child(argv)
    else:
        rc = main(argv)
        out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert rc == case.rc, err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"sglang-autoperf {argv[0]}: error: ") and case.fragment in err, err
        assert not out
    else:
        assert case.fragment in out


MODEL_CASES = [c for c in CASES if c.in_model]
_PROBE = ("import sys\nfrom sglang_autoperf.probe.model import ModelProbeError, probe_model\n"
          "try:\n    probe_model(sys.argv[1])\nexcept ModelProbeError as e:\n    print(e); sys.exit(3)\n")


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.id)
def test_startup_probe_raises_its_own_error(case, tmp_path):
    """What sglang's startup sees: ModelProbeError (the plugin steps aside), not a crash or a stall."""
    argv = case.argv(tmp_path)
    model = argv[argv.index("--model-path") + 1]
    if case.hang:
        rc, out, err = _run_child(argv, code=_PROBE, args=[model])
        assert rc == 3 and case.fragment in out, err
    else:
        with pytest.raises(ModelProbeError) as exc:
            probe_model(model)
        assert case.fragment in str(exc.value) and "\n" not in str(exc.value)
