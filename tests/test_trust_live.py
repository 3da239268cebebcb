"""Trust in the live path (issue 14): pinned placement flags hold through calibration and a cache
hit (pinned read from a real sglang ServerArgs), and no failure of ours reaches a request.

The manager is a stand-in (sglang's LayerwiseOffloadManager needs CUDA to be enabled; the GPU-marked
tests/gpu/test_live_contract.py runs the same paths on the real class); step traces are an H200
recording (tests/fixtures/traces), step times scripted per placement."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from sglang_autoperf.sglang_adapter import contract as sa
from sglang_autoperf.cache import TuningResult
from sglang_autoperf.measure import live
from sglang_autoperf.trace import PLACEMENT_KNOBS, Placement, StepStats
from test_monitor_hooks import IDENTITY, RECORDED, R0P8, R3P3, START, ScriptedMonitor, _tuner, _warmup

WARMUP_STEPS = 15  # live.calibration_steps(): 3 baseline + 3 x 3 candidates + 3 closing baseline


class TimedMonitor(ScriptedMonitor):
    """Step time by placement: more resident layers, faster (the copy-bound case that makes a
    calibration want to move every knob); the start point is the slowest."""

    def __init__(self):
        super().__init__({})

    def resolve(self, pending):
        step, placement = pending
        ms = 200.0 - 5 * placement.resident_layers - placement.prefetch_layers - 3 * (placement.policy == "leading")
        self.times[placement] = iter([ms] * 100)
        return super().resolve(pending)


# flags on a real command line -> the knobs they pin (by hand, from sglang's --help)
PINS = {
    "nothing": ([], set()),
    "prefetch": (["--dit-offload-prefetch-size", "2"], {"prefetch_layers"}),
    "resident": (["--dit-layerwise-resident-layers", "1"], {"resident_layers"}),
    "policy": (["--dit-layerwise-residency-policy", "strided"], {"policy"}),
    "prefetch+resident": (["--dit-offload-prefetch-size", "2", "--dit-layerwise-resident-layers", "1"],
                          {"prefetch_layers", "resident_layers"}),
    "per-component prefetch map": (["--layerwise-prefetch-size", "transformer=2"], {"prefetch_layers"}),
    "all three": (["--dit-offload-prefetch-size", "2", "--dit-layerwise-resident-layers", "1",
                   "--dit-layerwise-residency-policy", "strided"], set(PLACEMENT_KNOBS)),
}


def _pinned_tuner(tmp_path, server_args, flags):
    identity = sa.worker_identity(server_args(*flags))
    fixed = sa.pinned_placement_knobs(identity["pinned"])
    tuner = _tuner(tmp_path, {}, identity=identity, fixed=fixed, propose=lambda cal: [R3P3, R0P8])
    tuner.monitor = TimedMonitor()
    return tuner, fixed


def _kept(p: Placement, knobs) -> bool:
    return all(getattr(p, k) == getattr(START, k) for k in knobs)


@pytest.mark.parametrize("case", sorted(PINS))
def test_pinned_knobs_hold_through_calibration(tmp_path, server_args, case, caplog):
    flags, expected = PINS[case]
    tuner, fixed = _pinned_tuner(tmp_path, server_args, flags)
    assert fixed == expected
    with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
        _warmup(tuner, WARMUP_STEPS)
    assert all(_kept(p, fixed) for p in tuner.applied), tuner.applied
    assert all(_kept(p, fixed) for p in tuner.monitor.order)  # what was measured, too
    assert _kept(tuner.placement(), fixed)
    if fixed == set(PLACEMENT_KNOBS):
        assert tuner.monitor.order == [] and tuner.applied == []
        assert any("all pinned: live retuning reports only" in r.getMessage() for r in caplog.records)
    else:  # the free knobs did move: pinning one knob does not switch the tuner off
        assert tuner.placement() != START


@pytest.mark.parametrize("case", sorted(PINS))
def test_pinned_knobs_hold_at_a_cache_hit(tmp_path, server_args, case):
    flags, _ = PINS[case]
    tuner, fixed = _pinned_tuner(tmp_path, server_args, flags)
    shape = {"width": 832, "height": 480, "num_frames": 17, "batch_size": 1, "cfg": True, "is_warmup": False,
             "steps": 4}
    tuned = Placement(3, 3, "leading")  # every knob off the start
    tuner.cache.put(tuner.key(tuner.bucket(shape), 1), TuningResult(
        placement=tuned, objective=tuner.objective(), baseline=START, stats={tuned.label(): StepStats(1, 1, 1, 2)},
        reason="measured", calibration_s=1.0, steps_used=15))
    tuner.begin_request(shape)
    assert _kept(tuner.placement(), fixed)
    assert all(getattr(tuner.placement(), k) == getattr(tuned, k) for k in set(PLACEMENT_KNOBS) - fixed)


PREFETCH6 = RECORDED.parent / "h200-wan2.1-1.3b-17f-offload-prefetch6-2026-11-27.json"


@pytest.mark.parametrize("objective", ["speed", "memory"])
@pytest.mark.parametrize("knob", PLACEMENT_KNOBS)
def test_the_retuner_never_proposes_a_pinned_knob_off_its_value(knob, objective):
    """The real retuner over an H200 trace (resident 0, prefetch 6, leading): unpinned, its
    candidates move every knob somewhere; pinned, none moves that knob."""
    import json

    from sglang_autoperf.trace import TraceRecording
    from sglang_autoperf.retune.retuner import propose

    rec = TraceRecording.from_dict(json.loads(PREFETCH6.read_text()))
    current = rec.steps[-1].placement
    args = (rec.steps[1:], rec.layer_bytes, current, 4 << 30)
    free = propose(*args, objective=objective, max_candidates=3)
    pinned = propose(*args, objective=objective, max_candidates=3, fixed={knob})
    assert all(getattr(c.placement, knob) == getattr(current, knob) for c in pinned)
    moved = [c for c in free if getattr(c.placement, knob) != getattr(current, knob)]
    if knob == "prefetch_layers" and objective == "speed":
        assert moved and pinned  # the pin changed the proposal and still left something to try


# --- no failure of ours reaches a request ------------------------------------------------------------

class DenoisingStage:
    """What sglang's DenoisingStage does around our hooks (a LiveRun's two methods, as the binding
    registers them): a loop of steps, each through the step hook."""

    def __init__(self, run: live.LiveRun, steps: int, step_fn=None):
        self.live, self.steps, self.step_fn = run, steps, step_fn or (lambda i: i)

    def loop(self, stage, ctx, batch):
        return [self.live.around_denoising_step(self.step_fn, i) for i in range(self.steps)]

    def run(self, warmup=True):
        ctx = SimpleNamespace(is_warmup=warmup, num_inference_steps=self.steps)
        batch = SimpleNamespace(width=832, height=480, num_frames=17, batch_size=1, do_classifier_free_guidance=True)
        return self.live.around_denoising_loop(self.loop, self, ctx, batch)


def _warnings(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "sglang.autoperf"]


def _install(monkeypatch, tuner) -> live.LiveRun:
    run = live.LiveRun()
    run.install(tuner)
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    return run


def test_a_placement_change_that_raises_never_fails_the_request(tmp_path, monkeypatch, caplog):
    """As on the H200 with --dit-layerwise-residency-lifetime permanent: sglang_contract's
    set_manager_placement raises for the first candidate. The request completes, one warning."""
    tuner = _tuner(tmp_path, {START: [180.0] * 4, R3P3: [170.0] * 2, R0P8: [190.0] * 2})
    manager = tuner.primary[0]
    manager.residency_lifetime = "permanent"
    tuner.set_placement = sa.set_manager_placement  # the real adapter function
    run = _install(monkeypatch, tuner)
    with caplog.at_level(logging.DEBUG, logger="sglang.autoperf"):
        out = DenoisingStage(run, WARMUP_STEPS).run()
    assert out == list(range(WARMUP_STEPS))
    assert run.tuner is None  # stepped aside for the rest of the process
    [warning] = _warnings(caplog)
    assert "live tuning (step measurement) failed (RuntimeError: live residency changes need" in warning.getMessage()
    assert (manager.resident_layers, manager.prefetch_size, manager.residency_policy) == (1, 2, "strided")
    assert DenoisingStage(run, 4).run(warmup=False) == [0, 1, 2, 3]  # later requests: sglang's own


def test_a_restore_that_raises_too_is_one_warning_and_the_request_goes_on(tmp_path, monkeypatch, caplog):
    tuner = _tuner(tmp_path, {START: [180.0] * 4, R3P3: [170.0] * 2, R0P8: [190.0] * 2})
    calls = []

    def half_applies_then_raises(m, *, prefetch_layers, resident_layers, policy):
        calls.append(resident_layers)
        m.resident_layers = resident_layers  # a change left half done
        raise RuntimeError("device busy")
    tuner.set_placement = half_applies_then_raises
    run = _install(monkeypatch, tuner)
    with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
        out = DenoisingStage(run, WARMUP_STEPS).run()
    assert out == list(range(WARMUP_STEPS)) and run.tuner is None
    assert calls == [3, 1]  # the candidate, then the restore of the start point
    [warning] = _warnings(caplog)
    assert "restoring the start placement failed too (RuntimeError: device busy)" in warning.getMessage()


def test_a_candidate_whose_step_fails_is_rolled_back_and_the_step_runs_again(tmp_path, monkeypatch, caplog):
    tuner = _tuner(tmp_path, {START: [180.0] * 4, R3P3: [170.0] * 2, R0P8: [190.0] * 2})
    manager = tuner.primary[0]
    ran = []

    def step(i):
        if manager.resident_layers == R3P3.resident_layers:
            raise RuntimeError("sglang cannot run this placement")
        ran.append(i)
        return i
    run = _install(monkeypatch, tuner)
    with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
        out = DenoisingStage(run, WARMUP_STEPS, step).run()
    assert out == list(range(WARMUP_STEPS)) and ran == list(range(WARMUP_STEPS))
    assert tuner.placement() == START and run.tuner is tuner
    [warning] = _warnings(caplog)
    assert "resident=3 prefetch=3 leading failed (RuntimeError: sglang cannot run" in warning.getMessage()
    assert "rolled back to resident=1 prefetch=2 strided" in warning.getMessage()


def test_a_compile_restore_that_raises_never_fails_the_request(monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("ours")
    checker = SimpleNamespace(begin_request=broken, end_request=broken, request=None,
                              switch=SimpleNamespace(set=broken, __bool__=lambda self: True))
    run = live.LiveRun()
    run.compile_check = checker
    with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
        out = DenoisingStage(run, 3).run(warmup=False)
    assert out == [0, 1, 2] and run.compile_check is None
    [warning] = _warnings(caplog)
    assert "torch.compile check (request start) failed (RuntimeError: ours)" in warning.getMessage()


def test_permanent_lifetime_is_detected_when_the_worker_attaches(monkeypatch, caplog):
    """Up front, on sglang's real manager class (built on the CPU: it stays disabled there, but the
    lifetime is what decides), not by a placement change raising mid-request."""
    import torch
    from sglang.multimodal_gen.runtime.managers.memory_managers.layerwise_offload import LayerwiseOffloadManager

    blocks = torch.nn.Module()
    blocks.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(4))
    forward, permanent = (LayerwiseOffloadManager(blocks, layers_attr_str="blocks", num_layers=4, enabled=True,
                                                  resident_layers=2, residency_lifetime=lifetime)
                          for lifetime in ("forward", "permanent"))
    assert sa.managers_live_blocker({"transformer": [forward]}) is None
    assert "permanent" in sa.managers_live_blocker({"transformer": [permanent]})

    permanent.enabled = True  # as on a GPU worker
    pipeline = SimpleNamespace(modules={"transformer": SimpleNamespace(layerwise_offload_managers=[permanent])})
    worker = SimpleNamespace(pipeline=pipeline, server_args=None, rank=0)
    run = live.LiveRun()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
        run.attach_worker(worker, SimpleNamespace(changes=[]), SimpleNamespace())
    assert run.tuner is None
    [line] = [r.getMessage() for r in caplog.records if r.name == "sglang.autoperf"]
    assert line.startswith("[autoperf] live retuning steps aside: --dit-layerwise-residency-lifetime permanent")


def test_a_compile_timer_that_raises_never_fails_the_request(monkeypatch, caplog):
    """The torch.compile check times steps with CUDA events; if that fails, the step still runs and
    the check steps aside with the DiT left as sglang compiled it."""
    from sglang_autoperf.measure.compile_check import CompileChecker

    def broken(*a, **k):
        raise RuntimeError("event record failed")
    restored = []
    checker = CompileChecker(lambda: None, lambda bucket, batch_size: None, cache=object())
    checker.request = {"step": 0}  # mid-request, as begin_request leaves it
    checker.timer = SimpleNamespace(start=broken, stop=broken)
    checker.switch = SimpleNamespace(set=restored.append)
    run = live.LiveRun()
    run.compile_check = checker
    with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
        assert [run.around_denoising_step(lambda i: i, i) for i in range(3)] == [0, 1, 2]
    assert run.compile_check is None and restored == [True]
    [warning] = _warnings(caplog)
    assert "torch.compile check (step start) failed (RuntimeError: event record failed)" in warning.getMessage()


@pytest.mark.parametrize("mode, pinned_offload, objective", [
    ("auto", None, "speed"), ("speed", None, "speed"), ("memory", None, "memory"), ("manual", None, "report"),
    ("auto", True, "memory"), ("auto", "true", "memory"),
    ("auto", False, "speed"),  # offload pinned off: the cache once keyed this "memory", the planner "speed"
    ("manual", True, "report"),
])
def test_one_objective_rule(mode, pinned_offload, objective):
    from sglang_autoperf.plan.objective import placement_objective

    assert placement_objective(mode, pinned_offload) == objective


def test_manual_mode_never_calibrates(tmp_path, caplog):
    """--performance-mode manual reports only: no placement of the user's changes live either."""
    tuner = _tuner(tmp_path, {}, identity=dict(IDENTITY, performance_mode="manual"))
    with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
        _warmup(tuner, WARMUP_STEPS)
    assert tuner.applied == [] and tuner.monitor.order == []
    assert any("--performance-mode manual: live retuning reports only" in r.getMessage() for r in caplog.records)
