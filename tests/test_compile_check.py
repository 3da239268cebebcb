"""The measured torch.compile decision: the pure rule, the switch on real compiled torch modules,
the per-shape check (compiled request, eager request, keep the faster, cache), and the startup
that skips compile where an earlier check measured eager faster.

Step times come from a scripted timer here (CUDA events need a GPU); everything else is real:
torch modules compiled with nn.Module.compile as sglang does, the tuning cache on disk."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_autoperf.sglang_adapter import contract as sa
from sglang_autoperf.cache import COMPILE_OBJECTIVE, TuningCache, TuningResult, tuning_key
from sglang_autoperf.measure.compile_check import CompileChecker, NoCompiledModule
from sglang_autoperf.report import format_calibration_table
from sglang_autoperf.retune.retuner import decide_compile
from sglang_autoperf.startup import _compile_from_cache

IDENTITY = {"num_gpus": 1, "layout": "tp1-ulysses1-ring1-cfg1-dp1", "lora": (), "sglang_version": "0.5.23",
            "torch_version": "2.14.1", "performance_mode": "auto", "pinned": [], "rank": 0}
GPU_KEY = {"name": "NVIDIA H200", "memory_total_bytes": 150754820096, "link": "pcie5x16"}
BUCKET = "1024x1024x1f_b1_cfg0"


# --- the rule ------------------------------------------------------------------------------------

def test_compile_kept_only_when_faster_beyond_noise():
    assert decide_compile([100.0, 101.0, 100.5], [120.0, 121.0]).keep_compiled
    slower = decide_compile([130.0, 131.0], [120.0, 121.0])
    assert not slower.keep_compiled and "not faster" in slower.reason
    # 0.5% faster is inside the 1% floor: eager
    assert not decide_compile([119.4, 119.5], [120.0, 120.1]).keep_compiled
    # wide compiled spread swallows a 5% gain
    assert not decide_compile([100.0, 128.0], [120.0, 120.5]).keep_compiled


def test_compile_rule_with_missing_sides():
    assert not decide_compile([], [120.0]).keep_compiled
    assert decide_compile([100.0], []).keep_compiled


# --- the switch on real compiled modules ---------------------------------------------------------

def _compiled_dit():
    dit = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 8))
    dit.compile(backend="eager")  # what sglang does: nn.Module.compile (backend aside)
    return dit


def test_switch_runs_compiled_or_eager_and_back():
    dit, vae = _compiled_dit(), torch.nn.Linear(8, 8)
    vae.compile(backend="eager")  # not a DiT: never switched
    pipeline = SimpleNamespace(modules={"transformer": dit, "vae": vae})
    modules = sa.compiled_dit_modules(pipeline)
    assert modules == [dit]
    switch = sa.CompileSwitch(modules)
    x = torch.randn(2, 8)
    compiled_out = dit(x)
    switch.set(False)
    assert dit._compiled_call_impl is None and not switch.compiled and vae._compiled_call_impl is not None
    assert torch.equal(dit(x), compiled_out)
    switch.set(True)
    assert switch.compiled and torch.equal(dit(x), compiled_out)


def test_regional_compile_switches_every_compiled_block():
    dit = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    for block in dit:
        block.compile(backend="eager")  # sglang --regional-compile compiles blocks, not the DiT
    switch = sa.CompileSwitch(sa.compiled_dit_modules(SimpleNamespace(modules={"transformer": dit})))
    assert len(switch) == 2
    switch.set(False)
    assert all(b._compiled_call_impl is None for b in dit)


# --- the per-shape check -------------------------------------------------------------------------

class ScriptedTimer:
    """Stands in for CUDA events: each step takes `ms[compiled?]` (+ step 0 holds the compile)."""

    def __init__(self, switch, ms):
        self.switch, self.ms, self.steps = switch, ms, []

    def start(self, step):
        return step

    def stop(self, step):
        self.steps.append(step)

    def read(self):
        base = self.ms[self.switch.compiled]
        return {s: base * (50 if s == 0 else 1) + 0.1 * s for s in self.steps}


def _checker(tmp_path, dit, ms, rank=0):
    switch = sa.CompileSwitch(sa.compiled_dit_modules(SimpleNamespace(modules={"transformer": dit})))

    def key_for(bucket, batch_size):
        return tuning_key(fingerprint="fp", gpu_key=GPU_KEY, identity=IDENTITY, bucket=bucket,
                          batch_size=batch_size, budget=None, objective=COMPILE_OBJECTIVE)

    checker = CompileChecker(lambda: switch, key_for, TuningCache(tmp_path / "cache"), rank=rank,
                             timer_factory=lambda: ScriptedTimer(switch, ms))
    return checker, switch, key_for


def _serve(checker, dit, *, steps=6, warmup=False):
    shape = {"is_warmup": warmup, "batch_size": 1}
    checker.begin_request(shape, BUCKET)
    state = dit._compiled_call_impl is not None
    for _ in range(steps):
        checker.run_step(lambda: dit(torch.randn(1, 8)), (), {})
    checker.end_request()
    return state


@pytest.mark.parametrize("compiled_ms, eager_ms, keep", [(100.0, 130.0, True), (140.0, 120.0, False)])
def test_one_compiled_request_one_eager_then_the_faster(tmp_path, compiled_ms, eager_ms, keep):
    dit = _compiled_dit()
    checker, switch, key_for = _checker(tmp_path, dit, {True: compiled_ms, False: eager_ms})
    assert _serve(checker, dit, warmup=True) is True  # warmup: not measured, nothing switched
    assert checker.trials == {}
    assert [_serve(checker, dit) for _ in range(3)] == [True, False, keep]
    cached = checker.cache.get(key_for(BUCKET, 1))
    assert cached is not None and cached.compiled is keep and cached.objective == COMPILE_OBJECTIVE
    assert cached.stats["compiled"].n == 4 and cached.stats["eager"].n == 5  # steps 2-5 / 1-5
    assert "torch.compile check (" in format_calibration_table(cached)
    # a new process with the same key: no check, the cached choice from the first request on
    again, _, _ = _checker(tmp_path, _compiled_dit(), {True: 1.0, False: 1.0})
    fresh = again.find_switch()
    assert _serve(again, fresh._impls[0][0]) is keep and again.trials == {}


def test_only_rank_zero_writes_the_cache(tmp_path):
    dit = _compiled_dit()
    checker, _, key_for = _checker(tmp_path, dit, {True: 100.0, False: 130.0}, rank=1)
    for _ in range(2):
        _serve(checker, dit)
    assert checker.results[BUCKET].compiled is True and checker.cache.get(key_for(BUCKET, 1)) is None


def test_short_requests_measure_the_same_side_again(tmp_path):
    dit = _compiled_dit()
    checker, _, _ = _checker(tmp_path, dit, {True: 100.0, False: 130.0})
    # 3 steps: compiled requests give 1 measured step each (steps 0-1 skipped): two of them are needed
    assert [_serve(checker, dit, steps=3) for _ in range(4)] == [True, True, False, True]


def test_no_compiled_module_is_an_error_the_hook_turns_into_stepping_aside(tmp_path):
    checker = CompileChecker(lambda: sa.CompileSwitch([]), lambda b, n: None, TuningCache(tmp_path))
    with pytest.raises(NoCompiledModule):
        checker.begin_request({"is_warmup": False, "batch_size": 1}, BUCKET)


# --- startup: a cached "eager" saves the compile ------------------------------------------------

def test_startup_skips_compile_where_eager_was_measured_faster(tmp_path):
    from sglang_autoperf.cache import RESIDENT_DIT
    from sglang_autoperf.settings import Settings
    from sglang_autoperf.startup import RunContext, StartupPlan

    ctx = RunContext(model_path="/m", platform="cuda", num_gpus=1, base_gpu_id=0, performance_mode="auto",
                     pinned={}, current={"enable_torch_compile": False}, identity=IDENTITY,
                     width=1024, height=1024, num_frames=1)
    settings = Settings(enabled=True, cache_dir=str(tmp_path / "cache"))
    startup = StartupPlan(active=True, reason="", model_path="/m", platform="cuda", pinned=[],
                          model_fingerprint="fp", gpu_key=GPU_KEY, bucket=BUCKET, shape_known=True)

    def plan():
        return {"changes": [{"setting": "enable_torch_compile", "before": False, "after": True, "reason": "r"}],
                "notes": []}

    d = plan()
    _compile_from_cache(ctx, settings, d, startup, IDENTITY)
    assert len(d["changes"]) == 1  # nothing measured yet: compile as planned
    key = tuning_key(fingerprint="fp", gpu_key=GPU_KEY, identity=IDENTITY, bucket=BUCKET, batch_size=1,
                     budget=None, objective=COMPILE_OBJECTIVE)
    for compiled, kept in ((True, 1), (False, 0)):
        TuningCache(tmp_path / "cache").put(key, TuningResult(
            placement=RESIDENT_DIT, objective=COMPILE_OBJECTIVE, baseline=RESIDENT_DIT, stats={},
            reason="measured", calibration_s=1.0, steps_used=12, compiled=compiled))
        d = plan()
        _compile_from_cache(ctx, settings, d, startup, IDENTITY)
        assert len(d["changes"]) == kept
    assert any("torch.compile left off" in n for n in d["notes"])
