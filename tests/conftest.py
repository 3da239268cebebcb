"""Shared fixtures: the demo model, and a runner for the real `sglang generate` on the CPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA and a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    from sglang_autoperf.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "autoperf-demo-wan")


@pytest.fixture
def server_args(demo_model):
    """A real sglang ServerArgs for the demo model, built from command-line flags as sglang builds it
    (the flags given count as set by the user)."""
    def build(*flags: str):
        from sglang.multimodal_gen.runtime.server_args import ServerArgs
        from sglang.multimodal_gen.runtime.utils.argparse import FlexibleArgumentParser

        parser = ServerArgs.add_cli_args(FlexibleArgumentParser())
        argv = ["--model-path", str(demo_model), *flags]
        args, unknown = parser.parse_known_args(argv)
        return ServerArgs.from_cli_args(args, unknown, argv=argv)

    return build


@dataclass
class GenerateRun:
    rc: int
    log: str
    out_dir: Path
    perf_dump: Path
    dump_dir: Path

    @property
    def outputs(self) -> list[Path]:
        return sorted(self.out_dir.glob("*")) if self.out_dir.exists() else []

    def server_args(self, rank: int = 0) -> dict:
        return json.loads((self.dump_dir / f"server_args_rank{rank}.json").read_text())

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.log.splitlines() if needle in line]


# The test-only sglang plugin (tests/support): its dist-info lies beside the package, so the sglang
# processes the tests start find it through PYTHONPATH. Nothing is installed: a user's later
# sglang runs load no plugin of ours but `autoperf`.
SUPPORT = ROOT / "tests" / "support"


def sglang_env(tmp: Path, **overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_AUTOPERF") and k != "SGLANG_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SUPPORT), env.get("PYTHONPATH")) if p)
    env.pop("_SGLANG_AUTOPERF_ANNOUNCED", None)
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    # sglang writes caches under HOME and lock files under TMPDIR: keep both inside the test.
    env.update(
        TMPDIR=str(tmp),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        TORCHDYNAMO_DISABLE="1",
        PYTHONUNBUFFERED="1",
        AUTOPERF_TEST_DUMP_DIR=str(tmp / "dump"),
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def free_port() -> int:
    """sglang's workers rendezvous on --master-port (default 30005, not probed for availability):
    each run gets its own so that a lingering process elsewhere cannot fail it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sglang_cli() -> list[str]:
    exe = shutil.which("sglang", path=str(Path(sys.executable).parent)) or shutil.which("sglang")
    return [exe] if exe else [sys.executable, "-c", "from sglang.cli.main import main; main()"]


def generate(tmp: Path, model: Path, extra_args: list[str] | None = None, timeout: int = 600,
             **env: str | None) -> GenerateRun:
    """Run the real `sglang generate` on `model` (64x64, 5 frames, 2 steps), files under `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    out_dir = tmp / "out"
    perf = tmp / "perf.json"
    cmd = sglang_cli() + [
        "generate", "--model-path", str(model), "--prompt", "a red car",
        "--height", "64", "--width", "64", "--num-frames", "5", "--num-inference-steps", "2",
        "--seed", "0", "--output-path", str(out_dir), "--perf-dump-path", str(perf),
        "--master-port", str(free_port()),
    ] + list(extra_args or [])
    proc = subprocess.run(cmd, env=sglang_env(tmp, **env), capture_output=True, text=True, timeout=timeout, cwd=tmp)
    return GenerateRun(proc.returncode, proc.stdout + proc.stderr, out_dir, perf, tmp / "dump")


# Keys that differ between any two runs for reasons unrelated to settings.
_VOLATILE = ("port", "output_path", "input_save_path", "__autoperf_plan__")


def comparable(server_args: dict) -> dict:
    return {k: v for k, v in server_args.items() if not any(word in k for word in _VOLATILE)}


@pytest.fixture(scope="session")
def baseline_run(tmp_path_factory, demo_model) -> GenerateRun:
    """sglang with no autoperf hooks at all: SGLANG_PLUGINS admits only the test-support plugin
    (which also proves sglang's allow-list keeps the plugin out even with SGLANG_AUTOPERF=1)."""
    run = generate(
        tmp_path_factory.mktemp("baseline"), demo_model,
        SGLANG_PLUGINS="autoperf-test-support", SGLANG_AUTOPERF="1",
    )
    assert run.rc == 0 and run.outputs and run.perf_dump.exists(), run.log[-3000:]
    return run


@pytest.fixture(autouse=True)
def _autoperf_lines_reach_caplog(caplog, monkeypatch):
    """Building a real ServerArgs runs sglang's logging set-up, which replaces the root logger's
    handlers (pytest's caplog listens there): the plugin's lines would then miss caplog. Its
    handler listens on the plugin's logger directly instead."""
    import logging

    log = logging.getLogger("sglang.autoperf")
    monkeypatch.setattr(log, "propagate", False)
    log.addHandler(caplog.handler)
    yield
    log.removeHandler(caplog.handler)
