"""CPU tests of benchmarks/inprocess_sweep.py's schedule and summary for any DiT family (issue 16):
the plugin's cached choice read by the plugin's own cache, its place in the schedule, its row and
ratio in the summary. Placements and step times below are hand-picked inputs, not recorded ones.

    python3 -m pytest benchmarks/test_inprocess_sweep.py -q
"""
from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import inprocess_sweep as sweep  # noqa: E402
from sglang_autoperf.cache import TuningCache, TuningKey, TuningResult  # noqa: E402
from sglang_autoperf.retune.lists import LayerList, ListPlacement  # noqa: E402
from sglang_autoperf.trace import Placement, StepStats  # noqa: E402

ZIMAGE = [LayerList("transformer.layers", (400,) * 30)]  # one list (Z-Image's `layers`)
KLEIN = [LayerList("transformer.transformer_blocks", (600,) * 5),
         LayerList("transformer.single_transformer_blocks", (200,) * 20)]  # two lists (FLUX.2)


def _key(bucket: str) -> TuningKey:
    return TuningKey(model_fingerprint="f", gpu_name="NVIDIA H200", gpu_total_memory_bytes=150 * 2**30,
                     link="pcie5x16", gpu_count=1, layout="tp1-ulysses1-ring1-cfg1-dp1", sglang_version="0.5.23",
                     torch_version="2.11.0", shape_bucket=bucket)


def _result(chosen: Placement, compiled: bool | None = None, created_at: float = 1.0) -> TuningResult:
    stats = {chosen.label(): StepStats(100.0, 99.0, 101.0, 3)}
    return TuningResult(placement=chosen, objective="speed", baseline=Placement(3, 2, "strided"), stats=stats,
                        reason="hand-written", calibration_s=1.0, steps_used=6, compiled=compiled,
                        created_at=created_at)


def test_cached_choice_of_one_list_is_its_placement_on_that_list(tmp_path):
    TuningCache(tmp_path).put(_key("1024x1024x1f_b1_cfg0"), _result(Placement(7, 3, "strided")))
    TuningCache(tmp_path).put(_key("compile"), _result(Placement(30, 1, "leading"), compiled=True))
    choice = sweep.cached_choice(str(tmp_path), ZIMAGE)
    assert choice.to_dict() == {"transformer.layers": {"resident_layers": 7, "prefetch_layers": 3, "policy": "strided"}}


def test_cached_choice_per_list_and_absent(tmp_path):
    assert sweep.cached_choice(str(tmp_path), KLEIN) is None  # no calibration: no point, not a guess
    per_list = ListPlacement((("transformer.transformer_blocks", Placement(4, 1, "strided")),
                              ("transformer.single_transformer_blocks", Placement(2, 2, "strided"))))
    result = _result(Placement(4, 1, "strided"))
    result.set_lists(per_list, ListPlacement.uniform([ll.key for ll in KLEIN], Placement(1, 2, "strided")), None)
    TuningCache(tmp_path).put(_key("1024x1024x1f_b1_cfg0"), result)
    (tmp_path / "junk.json").write_text("{not json")  # the plugin's reader warns and skips it
    assert sweep.cached_choice(str(tmp_path), KLEIN) == per_list


def test_one_placement_for_several_lists_is_refused(tmp_path):
    TuningCache(tmp_path).put(_key("b"), _result(Placement(4, 1, "strided")))
    with pytest.raises(ValueError, match="2 layer lists"):
        sweep.cached_choice(str(tmp_path), KLEIN)


def _choices(lists, resident: int) -> dict[str, ListPlacement]:
    return {"8GiB": ListPlacement.uniform([ll.key for ll in lists], Placement(resident, 2, "strided"))}


def test_plugin_choice_and_its_neighbours_come_right_after_everything_resident():
    plugin = ListPlacement((("transformer.transformer_blocks", Placement(4, 1, "strided")),
                            ("transformer.single_transformer_blocks", Placement(2, 2, "strided"))))
    points = sweep.schedule_points(KLEIN, _choices(KLEIN, 1), grid=3, plugin=plugin)
    kinds = [p["kind"] for p in points]
    assert kinds[0] == "all-resident" and kinds[1] == "plugin" and points[1]["lists"] == plugin.to_dict()
    near = [p for p in points if p["kind"] == "plugin-near"]
    assert kinds[2:2 + len(near)] == ["plugin-near"] * len(near)
    def changed_resident(key: str) -> list[int]:  # neighbours that differ from the plugin's choice only there
        return sorted(p["lists"][key]["resident_layers"] for p in near
                      if {k: v for k, v in p["lists"].items() if k != key} ==
                      {k: v for k, v in plugin.to_dict().items() if k != key}
                      and p["lists"][key]["prefetch_layers"] == plugin.get(key).prefetch_layers)

    assert changed_resident("transformer.transformer_blocks") == [2, 3, 5]  # 6 is past the 5 double blocks
    assert changed_resident("transformer.single_transformer_blocks") == [0, 1, 3, 4]
    assert any(p["lists"]["transformer.transformer_blocks"]["policy"] == "leading" for p in near)
    # the planner's start is measured (the reference) but its neighbours are not
    assert "planner" in kinds and "planner-near" not in kinds
    assert kinds.count("grid") == 3 * 3 + 1  # the grid and the lowest-compute-per-byte point (two lists)


def test_one_list_has_no_lowest_compute_point_and_without_plugin_planner_neighbours_stay():
    points = sweep.schedule_points(ZIMAGE, _choices(ZIMAGE, 3), grid=7)
    labels = [p["label"] for p in points]
    assert "lowest-compute-per-byte list resident" not in labels
    assert "plugin" not in [p["kind"] for p in points]
    at_prefetch_2 = {p["lists"]["transformer.layers"]["resident_layers"] for p in points
                     if p["lists"]["transformer.layers"]["prefetch_layers"] == 2}
    assert {0, 5, 10, 15, 20, 25, 30} <= at_prefetch_2  # the grid (r5 is also a planner neighbour: once)
    assert "planner-8GiB layers r5" in labels and "planner-8GiB prefetch 3" in labels


def _row(lists: ListPlacement, kind: str, ms: float, peak_gib: float) -> dict:
    return {"label": kind, "kind": kind, "lists": lists.to_dict(), "step_ms": ms, "floor_ms": 90.0,
            "copy_floor_ms": 90.0, "peak_bytes": int(peak_gib * 2**30), "n": 1,
            "predicted_peak_bytes": {"10GiB": 0}, "feasible": {"10GiB": peak_gib <= 10},
            "feasible_predicted": {"10GiB": True}}


def test_budget_summary_finds_the_plugin_by_placement_even_under_the_reference_label():
    def one(r: int) -> ListPlacement:
        return ListPlacement((("transformer.layers", Placement(r, 2, "strided")),))

    rows = sorted([_row(one(30), "all-resident", 80.0, 18.0), _row(one(8), "grid", 100.0, 9.5),
                   _row(one(6), "reference", 104.0, 9.0),  # the plugin kept the planner's start
                   _row(one(0), "grid", 150.0, 6.0)], key=lambda r: r["step_ms"])
    out = sweep._budget_summary(rows, "10GiB", one(6), one(6).to_dict())
    assert out["best_measured_feasible"]["lists"] == one(8).to_dict()  # everything resident does not fit
    assert out["plugin_choice"]["lists"] == one(6).to_dict() and out["plugin_fits"] is True
    assert out["plugin_vs_best"] == pytest.approx(104.0 / 100.0)
    assert "plugin_choice" not in sweep._budget_summary(rows, "10GiB", one(6))  # FLUX sweeps: as before


def test_plans_written_beforehand(tmp_path):
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({"10GiB": {"dit": {"offload": True}}}))
    assert sweep.load_plans(str(path), ["10GiB", "24GiB"]) == {"10GiB": {"dit": {"offload": True}}}
    path.write_text(json.dumps(["not", "a", "map"]))
    with pytest.raises(ValueError, match="budget -> plan"):
        sweep.load_plans(str(path), ["10GiB"])
