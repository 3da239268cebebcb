"""plan.predict_step_ms: the cost model as benchmarks/compare.py uses it to prune its sweep."""
from pathlib import Path

import pytest

from sglang_autoperf.plan import sweep
from sglang_autoperf.probe.gpu import profile_from_snapshot

FIX = Path(__file__).parent / "fixtures"
FLUX = str(FIX / "models" / "FLUX.1-dev")
WL = {"width": 1024, "height": 1024, "frames": 1, "steps": 8}


@pytest.fixture
def h100(monkeypatch):
    snap = profile_from_snapshot(FIX / "nvml" / "nvml-h100-80gb-hbm3-2026-11-27.json")  # recorded on an H100
    monkeypatch.setattr(sweep, "_gpu", lambda: snap)


def test_more_resident_layers_predict_faster_until_they_do_not_fit(h100):
    ms = [sweep.predict_step_ms(FLUX, WL, {"resident": r, "prefetch": 2, "policy": "leading"}, 24 << 30)
          for r in (0, 5, 10)]
    assert all(m is not None for m in ms) and ms[0] > ms[1] > ms[2]
    # everything resident does not fit 24 GiB: it peaked at 25.32 GiB in the H200 sweep, where 19 doubles +
    # 18 singles at prefetch 4 peaked at 21.34 (benchmarks/results/2026-11-29-h200-sweep/README.md)
    assert sweep.predict_step_ms(FLUX, WL, {"resident": 38, "prefetch": 2, "policy": "leading"}, 24 << 30) is None


def test_no_gpu_no_prediction(monkeypatch):
    monkeypatch.setattr(sweep, "_gpu", lambda: profile_from_snapshot({"gpus": [], "source": "none"}))
    assert sweep.predict_step_ms(FLUX, WL, {"resident": 0, "prefetch": 1}, None) is None


def test_sweep_points_start_at_the_planners_choice_and_stay_feasible(h100):
    from sglang_autoperf.plan.planner import make_plan

    pts = sweep.benchmark_sweep_points(FLUX, WL, 24 << 30, max_points=5)
    model = sweep._model(FLUX)
    plan = make_plan(gpu=sweep._gpu(), model=model, workload=sweep._workload(model, WL),
                     pinned={"dit_layerwise_offload": True}, current={}, budget_bytes=24 << 30)
    first = pts[0]
    assert (first["resident"], first["prefetch"], first["policy"]) == (
        plan.dit.resident_layers, plan.dit.prefetch_layers, plan.dit.policy)
    # a per-list count: FLUX's longest list has 38 blocks, and more than 7 per list fit 24 GiB
    assert first["resident"] > 7
    assert len({(p["resident"], p["prefetch"], p["policy"]) for p in pts}) == len(pts) >= 3
    for p in pts:
        assert sweep.predict_step_ms(FLUX, WL, p, 24 << 30) is not None


def test_compare_uses_the_planners_sweep_points(h100):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import compare

    pts, why = compare.sweep_points(FLUX, WL, free_gib=24, max_points=3)
    assert why == "planner: benchmark_sweep_points"
    assert [(p.resident, p.prefetch, p.policy) for p in pts] == [
        (p["resident"], p["prefetch"], p["policy"]) for p in sweep.benchmark_sweep_points(FLUX, WL, 24 << 30, 3)]
