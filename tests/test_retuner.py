"""Retuner on synthetic traces built here, and on traces recorded on a real GPU (tests/fixtures/traces/)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_autoperf.trace import LayerTiming, PassTrace, Placement, StepTrace, TraceRecording
from sglang_autoperf.sglang_adapter.contract import streamed_layers
from sglang_autoperf.retune.retuner import (
    all_resident_note,
    calibration_budget,
    decide,
    measured_layer_costs,
    passes_per_step,
    placement_vram_bytes,
    propose,
    simulate_placement,
)

MB = 1 << 20
LAYER = 100 * MB


def synthetic_steps(n, compute_ms, copy_ms, placement, *, nsteps=4, passes=1, layer_list="blocks",
                    overhead_ms=2.0):
    """A synthetic timeline, not a measurement: each streamed layer's copy is issued when the
    previous layer starts computing (prefetch-1-like) and copies share one link."""
    streamed = set(streamed_layers(n, placement.resident_layers, placement.policy))
    steps = []
    for k in range(nsteps):
        t, link, ps = 0.0, 0.0, []
        for _ in range(passes):
            lts = []
            issue_at = t
            for j in range(n):
                cs, c0, c1, nbytes = t, None, None, 0
                if j in streamed:
                    c0 = max(issue_at, link)
                    c1 = link = c0 + copy_ms
                    cs = max(t, c1)
                    nbytes = LAYER
                lts.append(LayerTiming(j, cs, cs + compute_ms, cs - t, c0, c1, nbytes))
                issue_at = cs
                t = cs + compute_ms
            ps.append(PassTrace("transformer", layer_list, n, tuple(lts)))
        steps.append(StepTrace(k, t + overhead_ms, placement, tuple(ps)))
    return steps


# --- measured_layer_costs ---------------------------------------------------------------------

def test_layer_costs_from_traces():
    cur = Placement(4, 1, "leading")
    steps = synthetic_steps(10, 2.0, 5.0, cur)
    costs = measured_layer_costs(steps, [LAYER] * 10)
    assert len(costs) == 10
    assert all(c.compute_s == pytest.approx(2e-3) for c in costs)
    # streamed layers: their own rate; resident ones (0..3): the median rate of all copies
    assert all(c.copy_s == pytest.approx(5e-3) for c in costs)
    assert [c.local_index for c in costs] == list(range(10))


def test_layer_costs_cfg_counts_compute_per_pass():
    steps = synthetic_steps(6, 3.0, 1.0, Placement(0, 1), passes=2)
    assert passes_per_step(steps) == 2
    costs = measured_layer_costs(steps, [LAYER] * 6)
    assert all(c.compute_s == pytest.approx(3e-3) for c in costs)


def test_layer_costs_two_layer_lists_and_bad_bytes():
    a = synthetic_steps(3, 1.0, 2.0, Placement(0, 1), layer_list="double")
    b = synthetic_steps(2, 1.0, 2.0, Placement(0, 1), layer_list="single")
    steps = [StepTrace(x.step, x.wall_ms + y.wall_ms, x.placement, x.passes + y.passes) for x, y in zip(a, b)]
    costs = measured_layer_costs(steps, [LAYER] * 5)
    assert [(c.group, c.local_index) for c in costs] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    with pytest.raises(ValueError, match="layer_bytes"):
        measured_layer_costs(steps, [LAYER] * 4)


def test_layer_costs_all_resident_needs_a_rate():
    steps = synthetic_steps(4, 1.0, 1.0, Placement(4, 1))
    with pytest.raises(ValueError, match="fallback"):
        measured_layer_costs(steps, [LAYER] * 4)
    costs = measured_layer_costs(steps, [LAYER] * 4, fallback_h2d_bytes_per_s=50e9)
    assert costs[0].copy_s == pytest.approx(LAYER / 50e9)


# --- propose ------------------------------------------------------------------------------------

def _vram(n, p):
    return placement_vram_bytes(measured_layer_costs(synthetic_steps(n, 1.0, 3.0, Placement(0, 1)),
                                                     [LAYER] * n), p)


@pytest.mark.parametrize("headroom_layers", [0, 2, 4, 6])
def test_copy_bound_proposes_more_resident_within_headroom(headroom_layers):
    n, cur = 10, Placement(0, 1, "leading")
    steps = synthetic_steps(n, 1.0, 3.0, cur)  # copy 3x compute
    headroom = headroom_layers * LAYER
    cands = propose(steps, [LAYER] * n, cur, headroom)
    cur_vram = _vram(n, cur)
    for c in cands:
        assert c.extra_vram_bytes <= headroom
        assert _vram(n, c.placement) - cur_vram == c.extra_vram_bytes
    if headroom_layers == 0:
        assert all(c.placement.resident_layers == 0 for c in cands)
        return
    best = cands[0]
    assert best.predicted_step_ms < 0.99 * steps[0].wall_ms
    assert best.placement.resident_layers > 0
    # the most it could hold: current buffers (2 layers) + headroom, less its own buffers (>= 2)
    assert best.placement.resident_layers <= headroom_layers
    assert best.placement.resident_layers >= headroom_layers - 1
    preds = [c.predicted_step_ms for c in cands]
    assert preds == sorted(preds)
    assert len({c.placement for c in cands}) == len(cands) <= 3
    assert "predicted" in best.reason and "ms/step" in best.reason


def test_copy_bound_with_room_for_everything_goes_fully_resident():
    n, cur = 10, Placement(0, 1, "leading")
    cands = propose(synthetic_steps(n, 1.0, 3.0, cur), [LAYER] * n, cur, 100 * LAYER)
    assert cands[0].placement.resident_layers == n
    assert cands[0].extra_vram_bytes == (n - 2) * LAYER
    # anchored on the measured steps: never below the measured compute (10 x 1 ms)
    assert 10.0 <= cands[0].predicted_step_ms < 12.0


def test_negative_headroom_only_shrinks():
    n, cur = 10, Placement(6, 2, "leading")
    cands = propose(synthetic_steps(n, 1.0, 3.0, cur), [LAYER] * n, cur, -LAYER)
    assert all(c.extra_vram_bytes <= -LAYER for c in cands)


def test_compute_bound_proposes_nothing():
    n, cur = 10, Placement(0, 2, "leading")
    steps = synthetic_steps(n, 10.0, 1.0, cur)
    assert propose(steps, [LAYER] * n, cur, 100 * LAYER) == []


def test_memory_objective_picks_least_vram_within_2pct():
    n, cur = 10, Placement(5, 2, "leading")
    steps = synthetic_steps(n, 10.0, 1.0, cur)  # hidden copies: residency buys nothing
    cands = propose(steps, [LAYER] * n, cur, 100 * LAYER, objective="memory")
    assert cands
    best = cands[0]
    # nothing resident, the smallest prefetch: 2 layers of buffers vs 5 resident + 4 buffers
    assert best.placement == Placement(0, 1, "leading")
    assert best.extra_vram_bytes == (2 - 9) * LAYER
    cur_pred = propose(steps, [LAYER] * n, cur, 100 * LAYER, objective="memory", max_candidates=10)
    assert all(c.extra_vram_bytes >= best.extra_vram_bytes for c in cur_pred)
    fastest = min(c.predicted_step_ms for c in cur_pred)
    assert best.predicted_step_ms <= 1.02 * min(fastest, steps[0].wall_ms)


def test_memory_objective_never_trades_speed_beyond_2pct():
    n, cur = 10, Placement(10, 1, "leading")
    steps = synthetic_steps(n, 1.0, 3.0, cur)  # copy-bound: streaming anything costs
    cands = propose(steps, [LAYER] * n, cur, 0, objective="memory", fallback_h2d_bytes_per_s=LAYER / 3e-3)
    assert all(c.predicted_step_ms <= 1.02 * steps[0].wall_ms for c in cands)


def test_cfg_trace_proposes():
    n, cur = 8, Placement(0, 1, "leading")
    cands = propose(synthetic_steps(n, 1.0, 3.0, cur, passes=2), [LAYER] * n, cur, 4 * LAYER)
    assert cands and cands[0].placement.resident_layers > 0


def test_bad_objective():
    with pytest.raises(ValueError):
        propose(synthetic_steps(4, 1, 1, Placement(0, 1)), [LAYER] * 4, Placement(0, 1), 0, objective="fast")


# --- decide -------------------------------------------------------------------------------------

BASE = Placement(0, 1, "leading")
A = Placement(4, 1, "leading")
B = Placement(8, 2, "leading")


def test_decide_keeps_faster_beyond_spread():
    d = decide(BASE, {BASE: [100, 102, 98, 101], A: [80, 82, 79, 81]}, {BASE: 1, A: 2}, "speed")
    assert d.kept_new and d.placement == A
    assert "80.5" in d.reason and "100.5" in d.reason
    assert set(d.stats) == {BASE.label(), A.label()}


def test_decide_rolls_back_within_spread():
    # 3 ms faster median, but the baseline varies by +-5 ms
    d = decide(BASE, {BASE: [95, 100, 105], A: [96, 97, 98]}, {BASE: 1, A: 2}, "speed")
    assert not d.kept_new and d.placement == BASE
    assert "rolled back" in d.reason and "97.0" in d.reason and "5.0" in d.reason


def test_decide_rolls_back_within_one_percent():
    d = decide(BASE, {BASE: [100, 100, 100], A: [99.5, 99.5, 99.5]}, {}, "speed")
    assert not d.kept_new and "1.0 ms" in d.reason


def test_decide_excludes_oom():
    d = decide(BASE, {BASE: [100, 101, 99], B: [], A: [90, 90.5, 89.5]}, {BASE: 1, A: 2, B: 3}, "speed")
    assert d.placement == A and d.kept_new
    assert "OOM" in d.reason and B.label() in d.reason
    assert B.label() not in d.stats
    d = decide(BASE, {BASE: [100, 101, 99], B: []}, {}, "speed")
    assert not d.kept_new and "OOM" in d.reason


def test_decide_memory_least_vram_within_2pct():
    measured = {BASE: [100, 100], A: [101.5, 101.5], B: [110, 110]}
    vram = {BASE: 5 * LAYER, A: 3 * LAYER, B: 1 * LAYER}
    d = decide(BASE, measured, vram, "memory")
    assert d.placement == A and d.kept_new  # B uses less but is 10% slower
    d = decide(A, {A: [100, 100], BASE: [99.9, 99.9]}, {A: 3 * LAYER, BASE: 5 * LAYER}, "memory")
    assert d.placement == A and not d.kept_new


def test_decide_memory_leaves_the_baseline_only_beyond_its_noise():
    # H200, 2026-11-27, Wan-1.3B 17f warmup (n=2 each): the baseline's two steps spread 26 ms while
    # the GPU's speed drifted; a candidate measured 9% faster was kept and then served 16% slower
    # than the baseline run fixed. A baseline this noisy is not beaten by 9%.
    # Measured: baseline 181.2, 207.1; candidate 174.6, 178.6. With a closing baseline (its two
    # steps made up here, as a drifting GPU gives them) the baseline's median is no longer beaten.
    base, cand = Placement(1, 2, "strided"), Placement(3, 3, "leading")
    vram = {base: 1.0 * 2**30, cand: 1.37 * 2**30}
    closing = decide(base, {base: [181.2, 207.1, 176.0, 178.0], cand: [174.6, 178.6]}, vram, "memory")
    assert closing.placement == base and not closing.kept_new
    # noise alone: 4.8% slower than the fastest, but with a 30 ms spread, is not evidence
    noisy = decide(base, {base: [170.0, 200.0], cand: [176.6, 176.6]}, vram, "memory")
    assert noisy.placement == base and not noisy.kept_new
    # the same gain with a quiet baseline is evidence: switch
    quiet = decide(base, {base: [193.0, 195.0], cand: [174.6, 178.6]}, vram, "memory")
    assert quiet.placement == cand and quiet.kept_new
    # a baseline kept by its noise says so (H200, session e call 4: the message claimed "no placement
    # within 2% uses less VRAM" while the baseline itself was 12% above the fastest)
    assert "within 2% plus the noise 15.0 ms" in noisy.reason and "+4.8% vs the fastest" in noisy.reason
    assert "no placement within" in decide(base, {base: [176.0, 177.0], cand: [176.6, 176.6]}, vram, "memory").reason


# --- calibration_budget ---------------------------------------------------------------------------

def test_calibration_budget():
    assert calibration_budget(100.0, 10.0, 5, 20) == 5  # 2 s a trial
    assert calibration_budget(100.0, 10.0, 3, 20) == 3  # capped by candidates
    assert calibration_budget(100.0, 3.9, 5, 20) == 1
    assert calibration_budget(1000.0, 1.0, 3, 20) == 0
    assert calibration_budget(100.0, 0, 3, 20) == 0
    with pytest.raises(ValueError):
        calibration_budget(0.0, 10.0, 3, 20)


# --- on a trace recorded on a real GPU (tests/fixtures/traces/, labelled with card/date/sglang) ---

RECORDED = Path(__file__).parent / "fixtures" / "traces" / "h200-wan2.1-1.3b-17f-offload-prefetch1-2026-11-27.json"


def _recorded():
    rec = TraceRecording.from_dict(json.loads(RECORDED.read_text()))
    assert "H200" in rec.source and "sglang 0.5.23" in rec.source
    return rec


def test_recorded_trace_is_what_the_monitor_measured():
    rec = _recorded()
    step = rec.steps[0]
    assert step.placement == Placement(0, 1, "leading")
    assert [p.num_layers for p in step.passes] == [30, 30]  # Wan-1.3B, CFG: two passes per step
    # every streamed layer's copy is ~93 MB at 50-56 GB/s, well inside its ~4 ms of compute
    assert 50 < step.h2d_gbps < 57
    assert step.compute_ms < step.wall_ms and step.exposed_ms > 0


def test_recorded_trace_memory_objective_buys_the_host_stall_back_with_residency_not_prefetch():
    """The recorded prefetch-1 steps stall ~0.5 ms at every streamed layer after its copy had
    ended: host time in sglang's prefetch_layer, one per copy. A deeper prefetch issues the same
    copies (prefetch 8 leading stalled ~4 ms at every 8th layer on the same H200, 2026-11-27), so
    only resident layers remove them."""
    rec = _recorded()
    current = Placement(0, 1, "leading")
    cands = propose(rec.steps[:2], rec.layer_bytes, current, 100 << 30, objective="memory", max_candidates=3)
    assert cands
    # within 2% of the best predicted (all resident) takes most of the 30 layers resident
    assert all(c.placement.resident_layers >= 15 for c in cands)


def test_recorded_trace_speed_objective_respects_headroom():
    rec = _recorded()
    roomy = propose(rec.steps[:2], rec.layer_bytes, Placement(0, 1, "leading"), 100 << 30, objective="speed")
    assert roomy and max(c.placement.resident_layers for c in roomy) > 0
    tight = propose(rec.steps[:2], rec.layer_bytes, Placement(0, 1, "leading"), 300 << 20, objective="speed")
    assert all(c.extra_vram_bytes <= 300 << 20 for c in tight)


# FLUX.1-dev-shaped DiT (19 double + 38 single blocks), 1024², 24 GiB free, the plugin's startup
# placement (17 resident per list, strided, prefetch 4): warmup request recorded on an H200.
RECORDED_FLUX = Path(__file__).parent / "fixtures" / "traces" / "h200-flux1dev-1024-24g-r17p4strided-2026-11-27.json"


def _flux_steps():
    rec = TraceRecording.from_dict(json.loads(RECORDED_FLUX.read_text()))
    assert rec.source.startswith("recorded by sglang-autoperf's overlap monitor on NVIDIA H200, 2026-11-27")
    return rec, rec.steps[2:]  # step 1 still holds the first request's transfers (exposed 40 ms)


def test_recorded_flux_trace_two_layer_lists():
    rec, steps = _flux_steps()
    layers = measured_layer_costs(steps, rec.layer_bytes)
    assert len(layers) == 57 and [sum(1 for x in layers if x.group == g) for g in (0, 1)] == [19, 38]
    assert sum(x.bytes for x in layers) == 19 * 679_662_592 + 38 * 283_183_616
    rate = sorted(x.bytes / x.copy_s for x in layers)[len(layers) // 2]
    assert 50e9 < rate < 60e9  # pinned H2D on PCIe Gen5 x16 (55.2-55.4 GB/s measured by the probe test)
    placement = steps[0].placement
    assert placement == Placement(17, 4, "strided")
    sim = simulate_placement(layers, placement, passes_per_step(steps))
    measured = sorted(s.wall_ms for s in steps)[len(steps) // 2]
    assert abs(sim.step_s * 1e3 - measured) / measured < 0.05  # 150.7 vs 155.2 ms
    assert sim.exposed_s * 1e3 < 0.01 * measured


def test_recorded_flux_trace_hidden_copies_propose_nothing_for_speed():
    rec, steps = _flux_steps()
    for headroom_gib in (0, 1, 3, 8):
        assert propose(steps, rec.layer_bytes, steps[0].placement, headroom_gib << 30) == []
    # memory objective: placements that give VRAM back, within 2% of the measured step, and last
    # the reference (the most resident placement the 3 GiB allow), so "the fastest" is measured. 3 GiB:
    # less than everything resident adds (4.22 GiB, which frees both lists' prefetch buffers), so the
    # fastest that fits still streams and the 2% band reaches the start's neighbours
    cands = propose(steps, rec.layer_bytes, steps[0].placement, 3 << 30, objective="memory")
    assert len(cands) >= 2
    assert all(c.extra_vram_bytes < 0 for c in cands[:-1])
    ref = cands[-1]
    assert "reference" in ref.reason and 0 < ref.extra_vram_bytes <= 3 << 30
    assert ref.placement.resident_layers > steps[0].placement.resident_layers
    # one slot only: no room for a reference, the slot goes to saving VRAM
    one = propose(steps, rec.layer_bytes, steps[0].placement, 3 << 30, objective="memory", max_candidates=1)
    assert len(one) == 1 and one[0].extra_vram_bytes < 0


def test_all_resident_under_the_memory_objective_is_explained_with_the_budget_hint():
    """The step times of 2026-11-28 (H200, call 3): offload pinned on, R30 of 30 chosen because the
    fastest streamed placement ran 5% slower; the user is told why and how to cap VRAM."""
    r30, r0, start = Placement(30, 1, "leading"), Placement(0, 2, "strided"), Placement(1, 2, "strided")
    measured = {start: [175.5, 179.0, 179.8, 181.1], r0: [177.6, 178.0], r30: [169.1, 169.4]}
    vram = {start: 930 * MB, r0: 900 * MB, r30: 3256 * MB}
    decision = decide(start, measured, vram, "memory")
    assert decision.placement == r30
    note = all_resident_note(decision.placement, measured, 30, "memory", budget_set=False)
    assert "all 30 DiT layers stay resident" in note
    assert "resident=0 prefetch=2 strided, ran 177.8 ms/step, +5.1% vs 169.2 ms" in note
    assert "SGLANG_AUTOPERF_VRAM_BUDGET" in note
    # nothing to explain: a budget bounded the trials, the speed objective, a streamed choice
    assert all_resident_note(r30, measured, 30, "memory", budget_set=True) is None
    assert all_resident_note(r30, measured, 30, "speed", budget_set=False) is None
    assert all_resident_note(r0, measured, 30, "memory", budget_set=False) is None
    assert all_resident_note(r30, {r30: [169.1]}, 30, "memory", budget_set=False) is None  # no streamed one measured
