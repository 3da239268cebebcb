"""Startup: plan_startup's platform rules, the calibration schedule against the tuning cache, and
apply_changes on a real sglang ServerArgs (pinned flags untouched, derived fields re-derived)."""
from __future__ import annotations

import pytest

from sglang_autoperf.cache import TuningCache, TuningResult, tuning_key
from sglang_autoperf.retune.schedule import calibration_steps
from sglang_autoperf.trace import Placement, StepStats
from sglang_autoperf.settings import Settings
from sglang_autoperf.startup import RunContext, StartupPlan, _calibration_changes, plan_startup

IDENTITY = {"num_gpus": 1, "layout": "tp1-ulysses1-ring1-cfg1-dp1", "lora": (), "sglang_version": "0.5.23",
            "torch_version": "2.14.1", "performance_mode": "auto", "pinned": [], "pinned_placement": ""}
GPU_KEY = {"name": "NVIDIA H200", "memory_total_bytes": 150754820096, "link": "pcie5x16"}
BUCKET = "832x480x17f_b1_cfg1"


def ctx(**kw) -> RunContext:
    base = dict(model_path="/m", platform="cuda", num_gpus=1, base_gpu_id=0, performance_mode="auto",
                pinned={}, current={"warmup_mode": "off", "warmup_steps": 1}, identity=IDENTITY,
                width=832, height=480, num_frames=17)
    base.update(kw)
    return RunContext(**base)


def settings(tmp_path) -> Settings:
    return Settings(enabled=True, cache_dir=str(tmp_path / "cache"))


def plan_dict(step_ms=0.0):
    return {"changes": [], "notes": [], "dit": {"offload": True, "total_layers": 30}, "predicted": {"step_ms": step_ms}}


def startup(shape_known=True) -> StartupPlan:
    return StartupPlan(active=True, reason="", model_path="/m", platform="cuda", pinned=[], model_fingerprint="fp",
                       gpu_key=GPU_KEY, bucket=BUCKET, shape_known=shape_known)


def store(tmp_path, placement: Placement, bucket=BUCKET, objective="speed"):
    key = tuning_key(fingerprint="fp", gpu_key=GPU_KEY, identity=IDENTITY, bucket=bucket, batch_size=1,
                     budget=None, objective=objective)
    result = TuningResult(placement=placement, objective=objective, baseline=Placement(0, 1), reason="measured",
                          stats={placement.label(): StepStats(196.0, 195.6, 196.2, 2)}, calibration_s=6.3,
                          steps_used=12)
    assert TuningCache(tmp_path / "cache").put(key, result)


def run(tmp_path, context, shape_known=True, step_ms=0.0):
    d = plan_dict(step_ms)
    _calibration_changes(context, settings(tmp_path), d, startup(shape_known), IDENTITY)
    return {c["setting"]: c for c in d["changes"]}, d["notes"]


def test_cache_miss_schedules_a_bounded_warmup(tmp_path):
    changes, _ = run(tmp_path, ctx())
    assert changes["warmup_mode"]["after"] == "request"
    assert changes["warmup_steps"]["after"] == calibration_steps() == 15  # 3 + 3 candidates x 3 + 3 closing
    assert "dit_offload_prefetch_size" not in changes


@pytest.mark.parametrize("step_ms, steps", [(170.0, 15), (1300.0, 15), (1500.0, 12), (2200.0, 9), (2500.0, None),
                                            (7885.0, None)])
def test_warmup_is_bounded_by_the_predicted_step_time(tmp_path, step_ms, steps):
    # 7885 ms: the plan's prediction for Wan2.1-14B 480p 81f on an H200 (measured 7.6-7.7 s/step
    # there, 2026-11-27), where 12 calibration steps had cost ~90 s before a 4-step request.
    changes, notes = run(tmp_path, ctx(), step_ms=step_ms)
    if steps is None:
        assert "warmup_mode" not in changes and "warmup_steps" not in changes
        assert any("no calibration warmup" in n and "measured instead" in n for n in notes)
    else:
        assert changes["warmup_steps"]["after"] == steps
        assert steps * step_ms / 1e3 <= 20.0


def test_a_dit_with_several_layer_lists_calibrates_on_a_warmup_too(tmp_path):
    """FLUX.1 (double and single blocks): live retuning is per list now, so a cache miss
    schedules the same bounded warmup as a one-list DiT (before: none, and the plan stood)."""
    d = plan_dict(170.0)
    d["dit"]["resident_per_group"] = [9, 9]
    _calibration_changes(ctx(), settings(tmp_path), d, startup(), IDENTITY)
    changes = {c["setting"]: c["after"] for c in d["changes"]}
    assert changes == {"warmup_mode": "request", "warmup_steps": calibration_steps()}


def test_a_per_list_cache_hit_keeps_the_flags_and_schedules_nothing(tmp_path):
    """A per-list placement has no flag form (sglang's flags give every list one count): the plan's
    own flags stay, nothing is calibrated, and the note says the worker applies it."""
    from sglang_autoperf.retune.lists import ListPlacement

    per_list = ListPlacement((("transformer.transformer_blocks", Placement(15, 1, "strided")),
                              ("transformer.single_transformer_blocks", Placement(2, 2, "strided"))))
    key = tuning_key(fingerprint="fp", gpu_key=GPU_KEY, identity=IDENTITY, bucket=BUCKET, batch_size=1,
                     budget=None, objective="speed")
    result = TuningResult(placement=Placement(15, 1, "strided"), objective="speed", baseline=Placement(9, 2, "strided"),
                          reason="measured", stats={}, calibration_s=9.0, steps_used=15,
                          list_placement=[list(pair) for pair in per_list.to_dict().items()])
    assert TuningCache(tmp_path / "cache").put(key, result)
    d = plan_dict(170.0)
    d["dit"]["resident_per_group"] = [9, 9]
    _calibration_changes(ctx(), settings(tmp_path), d, startup(), IDENTITY)
    assert d["changes"] == []
    [note] = [n for n in d["notes"] if "tuning cache hit" in n]
    assert ("transformer_blocks: resident=15 prefetch=1 strided; single_transformer_blocks: resident=2 prefetch=2 "
            "strided (per layer list, applied by the worker") in note


def test_cache_hit_applies_the_measured_placement_without_calibration(tmp_path):
    store(tmp_path, Placement(0, 6, "leading"))
    changes, notes = run(tmp_path, ctx())
    assert changes["dit_offload_prefetch_size"]["after"] == 6
    assert "warmup_mode" not in changes and "warmup_steps" not in changes
    assert any("tuning cache hit" in n for n in notes)


def test_cache_entry_for_another_bucket_is_a_miss(tmp_path):
    store(tmp_path, Placement(0, 6, "leading"), bucket="832x480x81f_b1_cfg1")
    changes, _ = run(tmp_path, ctx())
    assert changes["warmup_mode"]["after"] == "request"


def test_pinned_warmup_off_calibrates_across_requests(tmp_path):
    changes, notes = run(tmp_path, ctx(pinned={"warmup_mode": "off"}))
    assert "warmup_mode" not in changes and "warmup_steps" not in changes
    assert any("first requests" in n for n in notes)


def test_user_warmup_is_used_as_is(tmp_path):
    changes, notes = run(tmp_path, ctx(current={"warmup_mode": "server", "warmup_steps": 1}))
    assert not changes and any("warmup the user configured" in n for n in notes)


def test_pinned_placement_flag_is_reported_not_changed(tmp_path):
    store(tmp_path, Placement(0, 6, "leading"))
    changes, notes = run(tmp_path, ctx(pinned={"dit_offload_prefetch_size": 1.0}))
    assert "dit_offload_prefetch_size" not in changes
    assert any(n.startswith("dit_offload_prefetch_size is pinned to 1.0; would have set 6") for n in notes)


def test_unknown_shape_with_tuned_setup_skips_the_warmup(tmp_path):
    store(tmp_path, Placement(0, 6, "leading"), bucket="832x480x17f_b1_cfg1")
    changes, notes = run(tmp_path, ctx(width=None, height=None), shape_known=False)
    assert not changes and any("request shape unknown" in n for n in notes)


def test_unknown_shape_on_first_start_calibrates_on_warmup(tmp_path):
    changes, _ = run(tmp_path, ctx(width=None, height=None), shape_known=False)
    assert changes["warmup_mode"]["after"] == "request"


@pytest.mark.parametrize("platform, active", [("cpu", True), ("rocm", False), ("mps", False), ("npu", False)])
def test_platforms(tmp_path, platform, active):
    plan = plan_startup(ctx(platform=platform), settings(tmp_path))
    assert plan.active is active and plan.changes == []
    if not active:
        assert "not tuned yet" in plan.reason


def test_manual_mode_only_reports(tmp_path):
    plan = plan_startup(ctx(performance_mode="manual"), settings(tmp_path))
    assert plan.active and plan.changes == [] and "manual" in plan.reason


def test_no_gpu_steps_aside(tmp_path):
    # this machine has no NVIDIA driver: the live probe must say so, not raise
    plan = plan_startup(ctx(), settings(tmp_path))
    assert plan.active is False and "no GPU" in plan.reason


# --- apply_changes on a real sglang ServerArgs ------------------------------------------------


def test_apply_changes_never_touches_pinned_flags(server_args):
    from sglang_autoperf.sglang_adapter.contract import apply_changes

    sa = server_args("--text-encoder-cpu-offload", "true")
    assert sa.is_arg_explicitly_set("text_encoder_cpu_offload")
    applied = apply_changes(sa, [
        {"setting": "text_encoder_cpu_offload", "before": True, "after": False, "reason": "r"},
        {"setting": "vae_cpu_offload", "before": False, "after": True, "reason": "r"},
    ], pinned=set())
    assert sa.text_encoder_cpu_offload is True
    assert sa.vae_cpu_offload is True
    assert [c["setting"] for c in applied] == ["vae_cpu_offload"]


def test_apply_changes_rederives_layerwise_components(server_args):
    from sglang_autoperf.sglang_adapter.contract import apply_changes

    sa = server_args()
    apply_changes(sa, [{"setting": "dit_layerwise_offload", "before": False, "after": True, "reason": "r"},
                       {"setting": "dit_offload_prefetch_size", "before": 0.0, "after": 6, "reason": "r"}],
                  pinned=set())
    assert sa.dit_layerwise_offload is True and sa.dit_cpu_offload is False
    assert "dit" in (sa.layerwise_offload_components or [])
    assert sa.dit_offload_prefetch_size == 6
    apply_changes(sa, [{"setting": "dit_layerwise_offload", "before": True, "after": False, "reason": "r"}],
                  pinned=set())
    assert "dit" not in (sa.layerwise_offload_components or [])


def test_apply_changes_rejects_unknown_fields(server_args):
    from sglang_autoperf.sglang_adapter.contract import apply_changes

    with pytest.raises(ValueError, match="unknown ServerArgs field"):
        apply_changes(server_args(), [{"setting": "no_such", "before": 1, "after": 2, "reason": "r"}], pinned=set())


@pytest.mark.parametrize("field, value", [("width", -64), ("height", 0), ("num_frames", 0), ("steps", -1)])
def test_a_nonpositive_request_size_steps_aside_with_one_reason(tmp_path, demo_model, field, value):
    """A request size no plan can serve (sglang's own parser let it through): the plugin steps aside
    and says why, instead of defaulting a 0 or raising from the workload model."""
    from pathlib import Path

    from sglang_autoperf.probe import gpu as gpu_mod

    snapshot = sorted((Path(__file__).parent / "fixtures" / "nvml").glob("*.json"))[0]
    plan = plan_startup(ctx(model_path=str(demo_model), **{field: value}), settings(tmp_path),
                        gpu=gpu_mod.profile_from_snapshot(snapshot))
    assert plan.active is False and f"{field} {value}" in plan.reason and plan.changes == []


def test_a_model_sglang_runs_with_its_diffusers_backend_steps_aside_in_one_line(tmp_path, demo_model):
    """--backend diffusers: no layerwise offload there, so nothing to plan; the reason is sglang's."""
    from pathlib import Path

    from sglang_autoperf.probe import gpu as gpu_mod

    snapshot = sorted((Path(__file__).parent / "fixtures" / "nvml").glob("*.json"))[0]
    gpu = gpu_mod.profile_from_snapshot(snapshot)
    native = plan_startup(ctx(model_path=str(demo_model)), settings(tmp_path), gpu=gpu)
    assert native.active
    plan = plan_startup(ctx(model_path=str(demo_model), backend="diffusers"), settings(tmp_path), gpu=gpu)
    assert plan.active is False and plan.changes == []
    assert "diffusers backend" in plan.reason and "--backend diffusers" in plan.reason and "\n" not in plan.reason


@pytest.mark.parametrize("compress, extra", [("auto", True), ("off", False), ("on", False)])
def test_a_predicted_compression_adds_its_ab_to_the_warmup_unless_the_user_chose(tmp_path, compress, extra):
    """Where the plan predicts compressed streaming pays, the worker measures it against raw on the
    warmup after the calibration (a one-request `sglang generate` of 8 steps never finished the A/B on
    served steps: benchmarks/results/2026-11-29-h200-klein); the user's 0 or 1 needs no measurement."""
    from dataclasses import replace

    from sglang_autoperf.retune.compression import AB_STEPS, SAMPLES_PER_ARM

    d = plan_dict(150.0)
    predicted = replace(startup(), plan={"dit": {"offload": True, "compress": True}})
    _calibration_changes(ctx(), replace(settings(tmp_path), compress=compress), d, predicted, IDENTITY)
    steps = {c["setting"]: c for c in d["changes"]}["warmup_steps"]
    assert steps["after"] == calibration_steps() + (AB_STEPS if extra else 0)
    assert AB_STEPS >= 2 * SAMPLES_PER_ARM  # each mode's timed steps, after one untimed step per switch
    assert ("compressed vs raw" in steps["reason"]) == extra
    assert steps["after"] * 150.0 / 1e3 <= 20.0  # still within the warmup's time bound
