"""Compressed layer streaming's decision (issue 18), on the CPU: the user's switch, the planner's
prediction (copy-bound placements only), the A/B that keeps compressed only when measured faster
beyond the noise, the worker reading the prediction from the plan the main process sends, and the
cached choice's strict round trip. The store itself: tests/test_compressed_streaming.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from sglang_autoperf.cache import TuningResult
from sglang_autoperf.retune.compression import NOISE, SAMPLES_PER_ARM, CompressionAB
from sglang_autoperf.settings import ENV_COMPRESS, Settings, SettingsError
from sglang_autoperf.startup import StartupPlan
from sglang_autoperf.trace import Placement


@pytest.mark.parametrize("value, mode", [(None, "auto"), ("", "auto"), ("auto", "auto"), ("0", "off"),
                                         ("off", "off"), ("1", "on"), ("ON", "on")])
def test_the_switch(value, mode):
    env = {"SGLANG_AUTOPERF": "1", **({ENV_COMPRESS: value} if value is not None else {})}
    assert Settings.from_env(env).compress == mode


def test_a_switch_value_not_understood_is_an_error_naming_the_variable():
    with pytest.raises(SettingsError, match="SGLANG_AUTOPERF_COMPRESS='maybe'"):
        Settings.from_env({"SGLANG_AUTOPERF": "1", ENV_COMPRESS: "maybe"})


def test_the_ab_alternates_pairs_and_times_only_the_second_step_of_each():
    ab = CompressionAB()
    modes, timed = [], []
    for _ in range(8):
        modes.append(ab.compressed_now())
        timed.append(ab.timed_now())
        ab.advance()
    assert modes == [False, False, True, True, False, False, True, True]
    assert timed == [False, True] * 4


def _ab(raw: list[float], compressed: list[float]) -> CompressionAB:
    ab = CompressionAB()
    for r, c in zip(raw, compressed):
        ab.record(False, r)
        ab.record(True, c)
    return ab


def test_compressed_is_kept_only_when_faster_beyond_the_noise():
    # the H200 medians of benchmarks/results/2026-11-29-h200-compress/: 16 GiB (copy-bound) and 24 GiB (copies hidden)
    assert _ab([232.3, 233.0, 231.9], [195.9, 196.4, 195.2]).keep_compressed()
    assert not _ab([151.9, 152.2, 151.5], [155.3, 156.1, 155.0]).keep_compressed()
    just_inside = 100 * (1 - NOISE) + 0.1  # faster, but not by more than the noise
    assert not _ab([100.0] * 3, [just_inside] * 3).keep_compressed()
    assert not _ab([100.0] * (SAMPLES_PER_ARM - 1), [50.0] * (SAMPLES_PER_ARM - 1)).done


def test_the_worker_reads_the_prediction_from_the_plan_it_receives():
    plan = StartupPlan(active=True, reason="", model_path="/m", platform="cuda", pinned=[],
                       plan={"dit": {"offload": True, "compress": True, "compressed_step_ms": 230.0}})
    assert StartupPlan.from_json(plan.to_json()).compression_predicted
    assert not StartupPlan(active=True, reason="", model_path="/m", platform="cuda", pinned=[]).compression_predicted


def test_the_planner_predicts_compression_where_copies_are_exposed_and_not_where_they_hide(flux_plan):
    copy_bound, hidden = flux_plan("16GiB"), flux_plan("24GiB")
    assert copy_bound.dit.offload and copy_bound.dit.compress
    assert copy_bound.dit.compressed_step_ms < copy_bound.predicted.step_ms
    assert any("compressed streaming" in n for n in copy_bound.notes)
    assert hidden.dit.offload and not hidden.dit.compress


def test_no_compression_is_predicted_for_wan_14b_81_frames_at_24_gib():
    """Issue 18's other copies-hidden case: a 480p 81f block computes 98.5 ms (plan/cost.py) and copies in ~10."""
    from sglang_autoperf.plan.budget import parse_vram_budget
    from sglang_autoperf.plan.planner import make_plan
    from sglang_autoperf.probe.gpu import profile_from_snapshot
    from sglang_autoperf.probe.workload import workload_for
    from test_cost_model import model

    m = model("Wan2.1-T2V-14B-Diffusers")
    gpu = profile_from_snapshot(Path(__file__).parent / "fixtures" / "nvml" / "nvml-h200-141gb-2026-11-27.json")
    plan = make_plan(gpu, m, workload_for(m, 832, 480, num_frames=81), {}, {},
                     parse_vram_budget("24GiB", gpu.devices[0].memory_free_bytes))
    assert plan.dit.offload and not plan.dit.compress


@pytest.fixture
def flux_plan():
    """The planner on the published FLUX.1-dev config, on the recorded H200 NVML snapshot's card."""
    from sglang_autoperf.plan.budget import parse_vram_budget
    from sglang_autoperf.plan.planner import make_plan
    from sglang_autoperf.probe.gpu import profile_from_snapshot
    from sglang_autoperf.probe.workload import workload_for
    from test_cost_model import model

    m = model("FLUX.1-dev")
    gpu = profile_from_snapshot(Path(__file__).parent / "fixtures" / "nvml" / "nvml-h200-141gb-2026-11-27.json")

    def plan(budget: str):
        free = gpu.devices[0].memory_free_bytes
        return make_plan(gpu, m, workload_for(m, 1024, 1024), {}, {}, parse_vram_budget(budget, free))

    return plan


def test_the_cached_choice_round_trips_and_a_wrong_type_is_a_miss():
    result = TuningResult(placement=Placement(2, 2, "strided"), objective="speed", baseline=Placement(1, 1, "strided"),
                          stats={}, reason="r", calibration_s=1.0, steps_used=3)
    result.compressed_streaming, result.compression_ms = True, {"raw": 232.3, "compressed": 195.9}
    again = TuningResult.from_dict(result.to_dict())
    assert again.compressed_streaming is True and again.compression_ms == {"raw": 232.3, "compressed": 195.9}
    assert TuningResult.from_dict({**result.to_dict(), "compressed_streaming": None}).compressed_streaming is None
    with pytest.raises(ValueError, match="compressed_streaming"):
        TuningResult.from_dict({**result.to_dict(), "compressed_streaming": "yes"})
