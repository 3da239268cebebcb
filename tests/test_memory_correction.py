"""Residency from measured memory (retune/memory.py), driven by the FLUX traces and memory readings
recorded by the in-process sweep on an H200 (benchmarks/results/2026-11-29-h200-sweep; fixture
traces under tests/fixtures/traces/ carry the reading of their block in meta.memory). Expected
values are the sweep's measurements."""
import json

import pytest

from sglang_autoperf.retune.lists import ListPlacement, placed_bytes, propose_lists
from sglang_autoperf.retune.memory import (
    PEAK_ERROR_MARGIN_BYTES, MemoryCorrection, MemoryReading, corrected_startup_peak, fill_residency,
    memory_correction)
from test_list_candidates import (
    DOUBLE, SINGLE, START_16G, START_24G, SWEEP, GiB, lists_of, recording, start_placement, sweep_points)

# The startup model's peak for the 16 GiB start placement (9 per list, prefetch 2, strided): the
# sweep's summary records the plan it ran (plans.16GiB.predicted.vram_bytes).
PLANNED_16G = 17067336228


def correction_at(name: str, limit_gib: float, predicted: int = PLANNED_16G) -> MemoryCorrection:
    rec = recording(name)
    return memory_correction(MemoryReading.from_dict(rec.meta["memory"]), lists_of(rec), start_placement(rec),
                             limit_bytes=int(limit_gib * GiB), predicted_peak_bytes=predicted)


def test_the_planned_peak_is_the_one_the_sweep_recorded():
    summary = json.loads((SWEEP / "call2-focus" / "summary.json").read_text())
    assert summary["plans"]["16GiB"]["predicted"]["vram_bytes"] == PLANNED_16G


def test_the_startup_model_over_predicted_and_the_correction_says_by_how_much():
    c = correction_at(START_16G, 16)
    assert c.measured_peak_bytes == 12922650624 + 1902510080  # reserved peak + non-allocator use, as recorded
    assert c.correction_bytes < -GiB  # issue 17: the startup model over-predicts at 16 GiB
    assert corrected_startup_peak(PLANNED_16G, c) == c.measured_peak_bytes
    assert c.margin_bytes == PEAK_ERROR_MARGIN_BYTES  # the prediction's measured error, not the fragmentation


def test_one_reading_predicts_every_measured_placement_within_its_margin():
    """From the reading at the 16 GiB start alone: the peak of every placement the sweep measured
    (both calls, prefetch 1-12, both policies), within the measured margin."""
    rec = recording(START_16G)
    lists, c = lists_of(rec), correction_at(START_16G, 16)
    points = sweep_points()
    assert len(points) > 50
    for p in points:
        predicted = c.peak_of(lists, ListPlacement.from_dict(p["lists"]))
        assert abs(predicted - p["peak_bytes"]) <= c.margin_bytes, p["label"]


@pytest.mark.parametrize("limit_gib", [12, 14, 16, 20, 24])
def test_filled_residency_never_exceeds_the_limit_and_leaves_no_layer_out_that_fits(limit_gib):
    rec = recording(START_16G)
    lists, c = lists_of(rec), correction_at(START_16G, limit_gib)
    filled = fill_residency(lists, c, start_placement(rec), [DOUBLE, SINGLE])
    assert c.peak_of(lists, filled) + c.margin_bytes <= c.limit_bytes
    for key, p in filled.lists:
        if p.resident_layers < next(ll.count for ll in lists if ll.key == key):
            more = filled.with_list(key, type(p)(p.resident_layers + 1, p.prefetch_layers, p.policy))
            assert not c.fits(lists, more)


def test_filled_residency_is_safe_where_the_sweep_measured_it():
    """Every placement the sweep measured that holds no more than the filled one at 16 GiB (same
    prefetch and policy) peaked under 16 GiB."""
    rec = recording(START_16G)
    lists, c = lists_of(rec), correction_at(START_16G, 16)
    filled = fill_residency(lists, c, start_placement(rec), [DOUBLE, SINGLE])
    held = placed_bytes(lists, filled)
    same_shape = [p for p in sweep_points() if all((v["prefetch_layers"], v["policy"]) == (2, "strided")
                                                   for v in p["lists"].values())]
    smaller = [p for p in same_shape if placed_bytes(lists, ListPlacement.from_dict(p["lists"])) <= held]
    assert len(smaller) > 10 and all(p["peak_bytes"] <= 16 * GiB for p in smaller)


def test_a_placement_over_the_limit_shrinks_and_nothing_fitting_is_said():
    rec = recording(START_24G)  # 18 per list: peaked 21.2 GiB
    lists = lists_of(rec)
    c = correction_at(START_24G, 16)
    shrunk = fill_residency(lists, c, start_placement(rec), [DOUBLE, SINGLE])
    assert placed_bytes(lists, shrunk) < placed_bytes(lists, start_placement(rec))
    assert fill_residency(lists, correction_at(START_24G, 4), start_placement(rec), [DOUBLE, SINGLE]) is None


@pytest.mark.parametrize("limit_gib", [12, 14, 16, 20, 24])
def test_every_measured_placement_the_correction_admits_peaked_under_the_limit(limit_gib):
    """Safety on recorded data: from the 16 GiB start's reading alone, no placement the sweep
    measured is admitted whose real peak exceeded the limit."""
    rec = recording(START_16G)
    lists, c = lists_of(rec), correction_at(START_16G, limit_gib)
    admitted = [p for p in sweep_points() if c.fits(lists, ListPlacement.from_dict(p["lists"]))]
    assert admitted and all(p["peak_bytes"] <= limit_gib * GiB for p in admitted)


def test_the_16g_candidates_from_the_start_trace_fit_and_the_admitted_best_is_near_the_best():
    """Issue 17's bar at 16 GiB, on recorded data: the best measured placement the correction
    admits is within 2% of the sweep's best point that peaked under 16 GiB and within 10% of that
    point's floor; the candidates proposed from the start's traces hold no more than the best
    admitted measured placement plus the margin the prediction's error needs."""
    rec = recording(START_16G)
    lists, c = lists_of(rec), correction_at(START_16G, 16)
    fitting = [p for p in sweep_points() if p["peak_bytes"] <= 16 * GiB]
    best = min(fitting, key=lambda p: p["step_ms"])
    admitted = [p for p in fitting if c.fits(lists, ListPlacement.from_dict(p["lists"]))]
    chosen = min(admitted, key=lambda p: p["step_ms"])
    assert chosen["step_ms"] <= 1.02 * best["step_ms"] and chosen["step_ms"] <= 1.10 * best["floor_ms"]
    candidates = propose_lists(rec.steps, rec.layer_bytes, start_placement(rec), c.placeable_bytes)
    assert candidates and all(c.peak_of(lists, x.placement) + c.margin_bytes <= 16 * GiB for x in candidates)


def test_the_correction_round_trips_and_is_read_strictly():
    c = correction_at(START_16G, 16)
    assert MemoryCorrection.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for bad in ({}, dict(c.to_dict(), limit_bytes=-1), dict(c.to_dict(), margin_bytes=1.5),
                dict(c.to_dict(), placement={}), dict(c.to_dict(), extra=1), dict(c.to_dict(), fixed_bytes="1")):
        with pytest.raises(ValueError):
            MemoryCorrection.from_dict(bad)
    with pytest.raises(ValueError):
        MemoryReading.from_dict({"reserved_peak_bytes": 1, "allocated_peak_bytes": True, "non_allocator_bytes": 0})
    with pytest.raises(ValueError):
        memory_correction(MemoryReading(1, 1, 0), lists_of(recording(START_16G)), start_placement(recording(START_16G)),
                          limit_bytes=0, predicted_peak_bytes=1)


# --- two more families, recorded the same way (tests/fixtures/memory/, source inside each file) ---

def _family(name: str):
    from pathlib import Path

    from sglang_autoperf.retune.lists import LayerList

    data = json.loads((Path(__file__).parent / "fixtures" / "memory" / name).read_text())
    lists = [LayerList(k, tuple(v)) for k, v in data["lists"].items()]
    reference = next(p for p in data["points"] if p["kind"] == "reference")
    reading = MemoryReading(reference["reserved_peak_bytes"], reference["allocated_peak_bytes"],
                            reference["non_allocator_bytes"])
    return lists, reading, ListPlacement.from_dict(reference["lists"]), data["points"]


FAMILIES = ["h200-flux2-klein-4b-1024-sweep-2026-11-29.json", "h200-z-image-turbo-1024-sweep-2026-11-29.json"]


@pytest.mark.parametrize("name", FAMILIES)
def test_one_reading_predicts_every_placement_of_another_family_within_the_margin(name):
    lists, reading, start, points = _family(name)
    c = memory_correction(reading, lists, start, limit_bytes=64 * GiB, predicted_peak_bytes=0)
    for p in points:
        assert abs(c.peak_of(lists, ListPlacement.from_dict(p["lists"])) - p["peak_bytes"]) <= c.margin_bytes, p["label"]


@pytest.mark.parametrize("name, limit_gib", [(FAMILIES[0], 8), (FAMILIES[1], 10), (FAMILIES[1], 12)])
def test_admitted_placements_of_another_family_peaked_under_the_limit_and_include_a_near_best(name, limit_gib):
    lists, reading, start, points = _family(name)
    c = memory_correction(reading, lists, start, limit_bytes=limit_gib * GiB, predicted_peak_bytes=0)
    admitted = [p for p in points if c.fits(lists, ListPlacement.from_dict(p["lists"]))]
    fitting = [p for p in points if p["peak_bytes"] <= limit_gib * GiB]
    assert admitted and all(p["peak_bytes"] <= limit_gib * GiB for p in admitted)
    best = min(p["median_ms"] for p in fitting)
    assert min(p["median_ms"] for p in admitted) <= 1.10 * best  # issue 16's bar, on what the rule admits


def test_the_klein_cold_run_beside_its_ballast_would_now_admit_a_near_best_point():
    """FLUX.2-klein beside a ballast leaving 8 GiB free (benchmarks/results/2026-11-29-h200-families,
    the cold run's log line): this process peaked at 5.86 GiB of 7.49 GiB; with the 1.26 GiB of
    fragmentation kept free, 2.65 GiB could be placed and the plugin kept a placement 1.246x the
    sweep's best point that fit. With the prediction's error kept free instead, the best measured
    placement that fits the room is within issue 16's 1.10x."""
    lists, _, _, points = _family(FAMILIES[0])
    fixed = int((7.49 - 1.26 - 2.65) * GiB)  # limit - margin - placeable, as logged
    best = min(p["median_ms"] for p in points if p["peak_bytes"] <= 8 * GiB)

    def best_within(room: int) -> float:
        return min(p["median_ms"] for p in points if placed_bytes(lists, ListPlacement.from_dict(p["lists"])) <= room)

    assert best_within(int(2.65 * GiB)) > 1.2 * best
    assert best_within(int(7.49 * GiB) - PEAK_ERROR_MARGIN_BYTES - fixed) <= 1.10 * best
