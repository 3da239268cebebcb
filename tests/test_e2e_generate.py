"""The real `sglang generate` (sglang 0.5.23) on the CPU with the demo model, plugin off and on.

`sglang generate` exits 0 even when generation failed, so every run checks that the output
file and the --perf-dump-path JSON exist.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import comparable, free_port, generate, sglang_env

pytestmark = pytest.mark.e2e

AUTOPERF_LINE = "[autoperf] "  # the plugin's own lines (CPU-compat lines say [autoperf-cpu-compat])


def _ok(run):
    assert run.rc == 0, run.log[-4000:]
    assert run.outputs, "no output file: " + run.log[-4000:]
    assert run.perf_dump.exists(), "no perf dump: " + run.log[-4000:]
    json.loads(run.perf_dump.read_text())


def _autoperf_hooks_applied(run) -> list[str]:
    return [line for line in run.lines("Applied") if "plugin=autoperf," in line]


def test_baseline_excludes_plugin_through_sglang_allow_list(baseline_run):
    assert baseline_run.lines("Skipping diffusion plugin autoperf (not in SGLANG_PLUGINS)")
    assert not baseline_run.lines(AUTOPERF_LINE)
    assert baseline_run.server_args()["__autoperf_plan__"] is None


@pytest.mark.parametrize("value", [None, "0"])
def test_off_changes_nothing(tmp_path, demo_model, baseline_run, value):
    run = generate(tmp_path, demo_model, SGLANG_AUTOPERF=value)
    _ok(run)
    assert run.lines("Loaded diffusion plugin autoperf")  # discovered by sglang...
    assert not _autoperf_hooks_applied(run)  # ...but registers nothing
    assert not run.lines(AUTOPERF_LINE)
    assert comparable(run.server_args()) == comparable(baseline_run.server_args())
    assert run.server_args()["__autoperf_plan__"] is None


def test_on_plan_reaches_worker(tmp_path, demo_model, baseline_run):
    run = generate(tmp_path, demo_model, SGLANG_AUTOPERF="1")
    _ok(run)
    assert _autoperf_hooks_applied(run)
    main_lines = run.lines("[autoperf] main process sees model")
    assert len(main_lines) == 1 and str(demo_model) in main_lines[0] and "platform cpu" in main_lines[0]
    assert "--model-path" in main_lines[0]  # the flags the user pinned are listed
    # the request as sglang's own generate parser read it (generate() passes these flags)
    assert "request 64x64, 5 frames, 2 steps" in main_lines[0]
    assert run.lines("[autoperf] plan: no changes (CPU platform")
    worker_lines = run.lines("[autoperf] worker rank 0 received plan")
    assert len(worker_lines) == 1 and "CPU platform" in worker_lines[0]
    plan = json.loads(run.server_args()["__autoperf_plan__"])
    assert plan["active"] is True and plan["platform"] == "cpu" and plan["changes"] == []
    assert "model_path" in plan["pinned"]
    # On the CPU nothing may change: never layerwise offload there.
    assert run.server_args()["dit_layerwise_offload"] is False
    assert comparable(run.server_args()) == comparable(baseline_run.server_args())


def test_bad_env_value_turns_plugin_off(tmp_path, demo_model, baseline_run):
    run = generate(tmp_path, demo_model, SGLANG_AUTOPERF="maybe")
    _ok(run)
    lines = run.lines("SGLANG_AUTOPERF='maybe' is not understood")
    assert len(lines) == 1, run.log[-3000:]  # once, not once per process
    assert "1/true/on/yes" in lines[0] and "sglang's own settings are in effect" in lines[0]
    assert not _autoperf_hooks_applied(run)
    assert comparable(run.server_args()) == comparable(baseline_run.server_args())


def test_bad_budget_value_turns_plugin_off(tmp_path, demo_model, baseline_run):
    run = generate(tmp_path, demo_model, SGLANG_AUTOPERF="1", SGLANG_AUTOPERF_VRAM_BUDGET="lots")
    _ok(run)
    lines = run.lines("SGLANG_AUTOPERF_VRAM_BUDGET='lots'")
    assert len(lines) == 1 and "plugin stays off" in lines[0], run.log[-3000:]
    assert not _autoperf_hooks_applied(run)
    assert comparable(run.server_args()) == comparable(baseline_run.server_args())


@pytest.mark.parametrize(
    "stage, message",
    [
        ("apply", "[autoperf] planning at startup failed (RuntimeError: forced failure at stage 'apply'"),
        ("worker", "[autoperf] the worker's plan check failed (RuntimeError: forced failure at stage 'worker'"),
    ],
)
def test_internal_failure_never_breaks_the_run(tmp_path, demo_model, baseline_run, stage, message):
    run = generate(tmp_path, demo_model, SGLANG_AUTOPERF="1", SGLANG_AUTOPERF_FAIL_AT=stage)
    _ok(run)
    failed = run.lines(message)
    assert len(failed) == 1, run.log[-3000:]
    assert "sglang's own settings are in effect" in failed[0]
    assert comparable(run.server_args()) == comparable(baseline_run.server_args())
    if stage == "apply":
        assert run.server_args()["__autoperf_plan__"] is None
        assert run.lines("[autoperf] worker rank 0 received no plan")


API_SCRIPT = textwrap.dedent(
    """
    import sys
    from sglang.multimodal_gen import DiffGenerator

    if __name__ == "__main__":
        model, out, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
        generator = DiffGenerator.from_pretrained(model_path=model, num_gpus=1, master_port=port)
        try:
            result = generator.generate(sampling_params_kwargs=dict(
                prompt="a red car", height=64, width=64, num_frames=5, num_inference_steps=2,
                seed=0, output_path=out))
            print("API RESULT", "ok" if result is not None else "none")
        finally:
            generator.shutdown()
    """
)


@pytest.mark.parametrize("enabled", [True, False])
def test_python_api(tmp_path, demo_model, enabled):
    script = tmp_path / "api_run.py"
    script.write_text(API_SCRIPT)
    out_dir = tmp_path / "out"
    env = sglang_env(tmp_path, SGLANG_AUTOPERF="1" if enabled else None)
    proc = subprocess.run(
        # the host program's own flags: under the Python API they are not sglang's (argparse
        # abbreviations once read `--wid` as --width)
        [sys.executable, str(script), str(demo_model), str(out_dir), str(free_port()), "--wid", "2048",
         "--num-frames", "99"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "API RESULT ok" in log, log[-4000:]
    assert list(out_dir.glob("*")), log[-3000:]
    plan = json.loads((tmp_path / "dump" / "server_args_rank0.json").read_text())["__autoperf_plan__"]
    if enabled:
        assert "[autoperf] main process sees model" in log
        assert "request shape unknown until the first request" in log and "99 frames" not in log
        assert "[autoperf] worker rank 0 received plan" in log
        assert json.loads(plan)["active"] is True
    else:
        assert AUTOPERF_LINE not in log
        assert plan is None


def test_sglang_serve_plans_in_main_and_worker(tmp_path, demo_model):
    """`sglang serve` builds ServerArgs through another path than `generate`; the plan must still
    be made in the main process and reach the worker before the server reports ready."""
    import os
    import signal
    import time

    from conftest import sglang_cli

    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            sglang_cli() + ["serve", "--model-path", str(demo_model), "--port", str(port),
                            "--master-port", str(free_port())],
            env=sglang_env(tmp_path, SGLANG_AUTOPERF="1"), stdout=log, stderr=subprocess.STDOUT,
            cwd=tmp_path, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            text = log_path.read_text()
            if "received plan" in text and "Uvicorn running" in text:
                break
            time.sleep(2)
        assert "[autoperf] main process sees model" in text, text[-3000:]
        assert "[autoperf] worker rank 0 received plan: no changes (CPU platform" in text, text[-3000:]
        assert "Uvicorn running" in text, text[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
