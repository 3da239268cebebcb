"""Retuning from measured traces: pure functions of plain data (no torch, no sglang).

The traces give each layer's measured compute and copy; the step simulation of plan/cost.py turns
those into a predicted step for every placement that fits the measured headroom (the prediction
prunes), and `decide` keeps a candidate only if its measured steps beat the baseline beyond the
noise (the measurement decides).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterable, Sequence

from sglang_autoperf.trace import Placement, StepStats, StepTrace
from sglang_autoperf.plan.cost import (
    LayerCost,
    StepSim,
    dit_placed_bytes,
    simulate_step,
)
from sglang_autoperf.sglang_adapter.contract import prefetch_per_group, resident_per_group
from sglang_autoperf.units import gib

OBJECTIVES = ("speed", "memory")
POLICIES = ("leading", "strided")
# A predicted gain below this is inside the model's error: not worth a calibration trial.
MIN_PREDICTED_GAIN = 0.01
# "memory": a placement this close to the fastest counts as equally fast.
MEMORY_TOLERANCE = 0.02
# decide(): a measured gain must exceed at least this share of the baseline median.
MIN_MEASURED_GAIN = 0.01


@dataclass(frozen=True)
class Candidate:
    placement: Placement
    predicted_step_ms: float
    extra_vram_bytes: int  # vs the current placement; <= headroom by construction
    reason: str


@dataclass(frozen=True)
class Decision:
    placement: Placement
    kept_new: bool
    reason: str
    stats: dict[str, StepStats] = field(default_factory=dict)


# --- traces -> per-layer costs ------------------------------------------------------------------

def layer_lists(steps: Sequence[StepTrace]) -> list[tuple[str, str, int]]:
    """(component, layer_list, num_layers) in order of first appearance: the group order of the
    LayerCosts and of `layer_bytes`."""
    seen: dict[tuple[str, str], int] = {}
    for s in steps:
        for p in s.passes:
            seen.setdefault((p.component, p.layer_list), p.num_layers)
    return [(c, name, n) for (c, name), n in seen.items()]


def passes_per_step(steps: Sequence[StepTrace]) -> int:
    """Forward passes per step through the first layer list (2 under CFG without CFG parallel)."""
    lists = layer_lists(steps)
    if not lists:
        raise ValueError("no passes in the traces")
    first = lists[0][:2]
    counts = [sum(1 for p in s.passes if (p.component, p.layer_list) == first) for s in steps]
    return max(1, int(round(statistics.median(counts))))


def measured_layer_costs(
    steps: list[StepTrace], layer_bytes: list[int], *, fallback_h2d_bytes_per_s: float | None = None,
) -> list[LayerCost]:
    """Per-layer LayerCost from traces: median compute of the layer over every pass seen, and
    copy_s = bytes / that layer's median measured H2D rate.

    `layer_bytes` covers every traced layer list, concatenated in `layer_lists` order. A layer
    never copied in the traces (resident) gets the median rate over all copies seen; with no copy
    at all, `fallback_h2d_bytes_per_s` (e.g. the probed link) is required.
    """
    lists = layer_lists(steps)
    if not lists:
        raise ValueError("no passes in the traces")
    total = sum(n for _, _, n in lists)
    if len(layer_bytes) != total:
        raise ValueError(
            f"layer_bytes has {len(layer_bytes)} entries but the traces hold {total} layers "
            f"({', '.join(f'{c}.{name}: {n}' for c, name, n in lists)})"
        )
    offsets, off = {}, 0
    for c, name, n in lists:
        offsets[(c, name)] = off
        off += n

    compute: list[list[float]] = [[] for _ in range(total)]
    rates: list[list[float]] = [[] for _ in range(total)]
    for s in steps:
        for p in s.passes:
            base = offsets[(p.component, p.layer_list)]
            for t in p.layers:
                idx = base + t.layer
                compute[idx].append(t.compute_ms)
                if t.copy_ms > 0:
                    nbytes = t.copy_bytes or layer_bytes[idx]
                    rates[idx].append(nbytes / (t.copy_ms / 1e3))

    all_rates = [r for rs in rates for r in rs]
    if all_rates:
        overall = statistics.median(all_rates)
    elif fallback_h2d_bytes_per_s:
        overall = float(fallback_h2d_bytes_per_s)
    else:
        raise ValueError("no host-to-device copy in the traces: pass fallback_h2d_bytes_per_s")

    out: list[LayerCost] = []
    for g, (c, name, n) in enumerate(lists):
        for j in range(n):
            idx = offsets[(c, name)] + j
            if not compute[idx]:
                raise ValueError(f"layer {j} of {c}.{name} never appears in the traces")
            rate = statistics.median(rates[idx]) if rates[idx] else overall
            out.append(LayerCost(
                compute_s=statistics.median(compute[idx]) / 1e3,
                copy_s=layer_bytes[idx] / rate,
                bytes=layer_bytes[idx],
                group=g,
                local_index=j,
            ))
    return out


# --- placements: simulation and VRAM ------------------------------------------------------------

def _groups(layers: Sequence[LayerCost]) -> list[list[LayerCost]]:
    by: dict[int, list[LayerCost]] = {}
    for lc in layers:
        by.setdefault(lc.group, []).append(lc)
    return [by[g] for g in sorted(by)]


def simulate_placement(layers: Sequence[LayerCost], placement: Placement, passes: int) -> StepSim:
    """plan/cost.simulate_step with the placement's knobs turned into per-list counts as sglang does."""
    counts = [len(g) for g in _groups(layers)]
    return simulate_step(
        layers,
        resident_per_group(counts, placement.resident_layers),
        prefetch_per_group(counts, placement.prefetch_layers),
        placement.policy,
        passes,
    )


def placement_vram_bytes(layers: Sequence[LayerCost], placement: Placement) -> int:
    """Resident layer bytes + prefetch buffers (plan/cost.dit_placed_bytes, non-block weights left
    out: they are on the card under every placement)."""
    groups = _groups(layers)
    dit = SimpleNamespace(
        block_groups=[SimpleNamespace(name=str(i), count=len(g), block_bytes=[lc.bytes for lc in g])
                      for i, g in enumerate(groups)],
        non_block_bytes=0,
        total_bytes=sum(lc.bytes for lc in layers),
    )
    weights, buffers = dit_placed_bytes([dit], placement.resident_layers, placement.prefetch_layers,
                                        placement.policy)
    return weights + buffers


def _effective(counts: Sequence[int], p: Placement) -> tuple:
    """What sglang actually runs for a placement: equal tuples behave identically."""
    res = resident_per_group(counts, p.resident_layers)
    if all(r >= n for r, n in zip(res, counts)):
        return (res,)  # nothing streamed: prefetch and policy are moot
    return (res, prefetch_per_group(counts, p.prefetch_layers), p.policy)


def streamed_copies(counts: Sequence[int], placement: Placement) -> int:
    """H2D copies sglang issues per pass: one per streamed layer, whatever the prefetch depth or
    policy (a `leading` burst of 8 issues 8 prefetch_layer calls at once; `strided` issues one per
    pre-hook and its repeats return early). Each costs host time in sglang's pre-hook."""
    return sum(max(0, n - min(placement.resident_layers, n)) for n in counts)


def _anchor(steps: Sequence[StepTrace], layers: Sequence[LayerCost], passes: int,
            current: Placement) -> tuple[float, float, float]:
    """(k, offset_ms, per_copy_ms) with predicted = compute + k x simulated waiting + offset
    + per_copy x streamed copies, fit so that the most-traced placement predicts its measured
    median step. Compute is measured directly; the simulated waiting for copies is the uncertain
    part. Stall the copy simulation does not explain (measured on H200 with Wan-1.3B in the GPU
    sandbox: ~0.5 ms at every streamed layer under prefetch 2 strided, ~4 ms at every 8th under
    prefetch 8 leading, while each copy had finished ms earlier) is host time in sglang's
    prefetch_layer, during which the GPU runs dry: it scales with the copies issued, so only
    resident layers remove it, not a deeper prefetch. The rest of a longer measured step is
    non-block work (offset).
    Measured below simulated: the simulation over-predicts the waiting, so it is scaled (k < 1)."""
    counts = Counter(s.placement for s in steps)
    traced = max(counts, key=lambda p: (counts[p], p == current))
    traced_steps = [s for s in steps if s.placement == traced]
    measured = statistics.median([s.wall_ms for s in traced_steps])
    measured_stall = statistics.median([s.exposed_ms for s in traced_steps])
    sim = simulate_placement(layers, traced, passes)
    sim_ms, compute_ms = sim.step_s * 1e3, sim.compute_s * 1e3
    copies = streamed_copies([len(g) for g in _groups(layers)], traced) * passes
    residual = max(0.0, measured_stall - sim.exposed_s * 1e3)
    per_copy = residual / copies if copies else 0.0
    if measured >= sim_ms:
        return 1.0, max(0.0, measured - sim_ms - residual), per_copy
    if sim_ms > compute_ms:
        return max(0.0, (measured - compute_ms) / (sim_ms - compute_ms)), 0.0, 0.0
    return 1.0, 0.0, 0.0  # measured below its own compute: inconsistent trace, use the simulation as is


def _describe_change(cur: Placement, new: Placement) -> str:
    parts = []
    if new.resident_layers != cur.resident_layers:
        parts.append(f"resident {cur.resident_layers}->{new.resident_layers}")
    if new.prefetch_layers != cur.prefetch_layers:
        parts.append(f"prefetch {cur.prefetch_layers}->{new.prefetch_layers}")
    if new.policy != cur.policy:
        parts.append(f"policy {cur.policy}->{new.policy}")
    return ", ".join(parts) or "unchanged"


@dataclass(frozen=True)
class _Option:
    """A placement in the candidate pool: its predicted step, VRAM and simulation."""

    placement: Placement
    ms: float
    vram: int
    sim: StepSim


@dataclass(frozen=True)
class _Pool:
    current: _Option
    counts: list[int]
    options: dict[tuple, _Option]  # by what sglang actually runs (_effective): equal keys behave alike

    def others(self) -> list[_Option]:
        cur = _effective(self.counts, self.current.placement)
        return [o for k, o in self.options.items() if k != cur]


def _pool(steps, layer_bytes, current, headroom_bytes, prefetch_choices, fallback_h2d_bytes_per_s, fixed) -> _Pool:
    """Every placement that fits the headroom and keeps the `fixed` knobs, predicted from the traces."""
    layers = measured_layer_costs(steps, layer_bytes, fallback_h2d_bytes_per_s=fallback_h2d_bytes_per_s)
    passes = passes_per_step(steps)
    counts = [len(g) for g in _groups(layers)]
    k, offset, per_copy = _anchor(steps, layers, passes, current)

    def option(p: Placement, vram: int) -> _Option:
        sim = simulate_placement(layers, p, passes)
        ms = ((sim.compute_s + k * (sim.step_s - sim.compute_s)) * 1e3 + offset
              + per_copy * streamed_copies(counts, p) * passes)
        return _Option(p, ms, vram, sim)

    cur = option(current, placement_vram_bytes(layers, current))
    options = {_effective(counts, current): cur}
    prefetches = sorted({int(p) for p in prefetch_choices if int(p) >= 1} | {current.prefetch_layers})
    for r in range(0, max(counts) + 1):
        for policy in POLICIES:
            for pf in prefetches:
                p = Placement(r, pf, policy)
                eff = _effective(counts, p)
                # the first (smallest prefetch, current first) stands for the rest; pinned knobs stay
                if eff in options or p.keeping(current, fixed) != p:
                    continue
                vram = placement_vram_bytes(layers, p)
                if vram - cur.vram <= headroom_bytes:
                    options[eff] = option(p, vram)
    return _Pool(cur, counts, options)


def _candidate(pool: _Pool, o: _Option, why: str) -> Candidate:
    cur = pool.current
    gain = (cur.ms - o.ms) / cur.ms * 100 if cur.ms > 0 else 0.0
    return Candidate(o.placement, o.ms, o.vram - cur.vram, (
        f"{_describe_change(cur.placement, o.placement)}: predicted {cur.ms:.1f} -> {o.ms:.1f} ms/step "
        f"({gain:+.1f}% faster; exposed copy {cur.sim.exposed_s * 1e3:.1f} -> {o.sim.exposed_s * 1e3:.1f} ms), "
        f"VRAM {gib(o.vram - cur.vram, 2, signed=True)}{why}"))


def _fastest(pool: _Pool, max_candidates: int) -> list[Candidate]:
    """speed: predicted faster than current by more than 1%, Pareto-filtered on (step, VRAM)."""
    fast = [o for o in pool.others() if o.ms < pool.current.ms * (1 - MIN_PREDICTED_GAIN)]
    chosen: list[_Option] = []
    # ties: less VRAM, then more resident (fewer copies: less exposed to model error)
    for o in sorted(fast, key=lambda o: (round(o.ms, 6), o.vram, -o.placement.resident_layers)):
        # dominated: an already chosen one is as fast (within 0.5%) and needs no more VRAM
        if any(c.vram <= o.vram and c.ms <= o.ms + 0.005 * abs(o.ms) for c in chosen):
            continue
        chosen.append(o)
        if len(chosen) >= max_candidates:
            break
    return [_candidate(pool, o, "") for o in chosen]


def _least_vram(pool: _Pool, max_candidates: int) -> list[Candidate]:
    """memory: least VRAM first among placements predicted within 2% of the best predicted, and the
    reference (see below) measured beside them."""
    cur = pool.current
    best_ms = min(o.ms for o in pool.options.values())
    limit = best_ms * (1 + MEMORY_TOLERANCE)
    cur_ok = cur.ms <= limit
    # "Within 2% of the fastest" is decided on measured times, so the fastest must be measured too:
    # with two or more slots, the last goes to the reference, the most resident placement the free
    # VRAM allows (the speed limit: nothing copied that can stay). Predictions alone missed it in
    # the GPU sandbox, 2026-11-27: each streamed layer's host time in sglang's prefetch_layer
    # (0.5 ms) is invisible to a copy model and varies by process.
    reference = max(pool.options.values(), key=lambda o: (o.placement.resident_layers, -o.ms))
    measure_reference = (max_candidates >= 2
                         and _effective(pool.counts, reference.placement) != _effective(pool.counts, cur.placement))
    slots = max_candidates - 1 if measure_reference else max_candidates
    eligible = [o for o in pool.others() if o.ms <= limit and (not cur_ok or o.vram < cur.vram)
                and not (measure_reference and o is reference)]  # it has its own slot
    chosen: list[_Option] = []
    for o in sorted(eligible, key=lambda o: (o.vram, round(o.ms, 6), -o.placement.resident_layers)):
        if len(chosen) >= slots:
            break
        if any(c.vram <= o.vram and c.ms <= o.ms for c in chosen):
            continue
        chosen.append(o)
    out = [_candidate(pool, o, f"; within {MEMORY_TOLERANCE:.0%} of the best predicted {best_ms:.1f} ms")
           for o in chosen]
    if measure_reference:
        out.append(_candidate(pool, reference, "; reference: the most resident placement that fits, measured so "
                                               "that 'within 2% of the fastest' compares measured times"))
    return out


def propose(
    steps: list[StepTrace],
    layer_bytes: list[int],
    current: Placement,
    headroom_bytes: int,
    *,
    objective: str = "speed",
    max_candidates: int = 3,
    prefetch_choices: Iterable[int] = (1, 2, 3, 4, 6, 8),
    fallback_h2d_bytes_per_s: float | None = None,
    fixed: Iterable[str] = (),
) -> list[Candidate]:
    """Placements worth a calibration trial, best first; never one whose extra VRAM over
    `current` exceeds `headroom_bytes` (measured free memory minus the caller's safety margin),
    never one that moves a knob in `fixed` (Placement field names the user pinned) off `current`.

    speed: predicted faster than current by more than 1%, Pareto-filtered on (step, VRAM).
    memory: least VRAM first among placements predicted within 2% of the best predicted.
    Predictions are the simulation anchored on the measured steps (see _anchor).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if not steps or max_candidates <= 0:
        return []
    pool = _pool(steps, layer_bytes, current, headroom_bytes, prefetch_choices, fallback_h2d_bytes_per_s,
                 frozenset(fixed))
    return _fastest(pool, max_candidates) if objective == "speed" else _least_vram(pool, max_candidates)


# --- measured trials -> keep or roll back ---------------------------------------------------------

def measured_noise(reference: StepStats, other: StepStats) -> float:
    """How much faster `other` must measure than `reference` to count: half the wider spread of the
    two, and at least MIN_MEASURED_GAIN of the reference's median (a placement or compile change
    is kept only beyond it)."""
    return max(reference.spread_ms / 2, other.spread_ms / 2, MIN_MEASURED_GAIN * reference.median_ms)


def _decide_speed(baseline: Placement, base: StepStats, ok: list[Placement], stats: dict[str, StepStats],
                  failed_note: str) -> Decision:
    """The fastest candidate whose median beats the baseline's by more than the noise."""
    passing, closest = [], None
    for p in ok:
        s = stats[p.label()]
        noise = measured_noise(base, s)
        gain = base.median_ms - s.median_ms
        if gain > noise:
            passing.append((s.median_ms, p, gain, noise))
        elif closest is None or s.median_ms < closest[0]:
            closest = (s.median_ms, p, gain, noise)
    if passing:
        ms, p, gain, noise = min(passing, key=lambda x: x[0])
        return Decision(p, True, (
            f"kept {p.label()}: median {ms:.1f} ms/step vs baseline {base.median_ms:.1f} ms "
            f"({-gain / base.median_ms * 100:+.1f}%), beyond the noise {noise:.1f} ms "
            f"(n={stats[p.label()].n} vs {base.n})" + failed_note), stats)
    ms, p, gain, noise = closest
    return Decision(baseline, False, (
        f"rolled back to {baseline.label()} ({base.median_ms:.1f} ms/step): best candidate "
        f"{p.label()} measured {ms:.1f} ms ({-gain / base.median_ms * 100:+.1f}%), not faster by more "
        f"than the noise {noise:.1f} ms" + failed_note), stats)


def _decide_memory(baseline: Placement, base: StepStats, ok: list[Placement], stats: dict[str, StepStats],
                   vram: dict[Placement, int], failed_note: str) -> Decision:
    """Least VRAM among placements within 2% of the fastest median; the baseline left on evidence."""
    pool = [baseline] + [p for p in ok if p in vram]
    fastest = min(stats[p.label()].median_ms for p in pool)
    limit = fastest * (1 + MEMORY_TOLERANCE)
    fastest_stats = min((stats[p.label()] for p in pool), key=lambda st: st.median_ms)
    # Leaving the baseline needs evidence: it stays eligible unless slower than the tolerance by
    # more than the noise (half the wider spread of it and the fastest), as the speed rule asks.
    base_limit = limit + max(base.spread_ms / 2, fastest_stats.spread_ms / 2)
    eligible = [p for p in pool if stats[p.label()].median_ms <= (base_limit if p == baseline else limit)]
    inf = float("inf")
    chosen = min(eligible, key=lambda p: (vram.get(p, inf), stats[p.label()].median_ms, p != baseline))
    s = stats[chosen.label()]
    v = vram.get(chosen)
    vtxt = gib(v, 2, missing="VRAM unknown")
    if chosen == baseline and s.median_ms > limit:
        return Decision(baseline, False, (
            f"kept {baseline.label()} ({s.median_ms:.1f} ms/step, {vtxt}): "
            f"{(s.median_ms / fastest - 1) * 100:+.1f}% vs the fastest measured ({fastest:.1f} ms), but within "
            f"{MEMORY_TOLERANCE:.0%} plus the noise {base_limit - limit:.1f} ms (half the wider spread; the baseline "
            f"ran {base.min_ms:.1f}-{base.max_ms:.1f} ms): not left without evidence" + failed_note), stats)
    if chosen == baseline:
        return Decision(baseline, False, (
            f"kept {baseline.label()} ({s.median_ms:.1f} ms/step, {vtxt}): no placement within "
            f"{MEMORY_TOLERANCE:.0%} of the fastest measured ({fastest:.1f} ms) uses less VRAM" + failed_note),
            stats)
    bv = vram.get(baseline)
    btxt = gib(bv, 2, missing="VRAM unknown")
    return Decision(chosen, True, (
        f"kept {chosen.label()}: {vtxt} vs baseline {btxt}, median {s.median_ms:.1f} ms/step vs "
        f"{base.median_ms:.1f} ms, within {MEMORY_TOLERANCE:.0%} of the fastest measured ({fastest:.1f} ms)"
        + failed_note), stats)


def decide(
    baseline: Placement,
    measured: dict[Placement, list[float]],
    vram: dict[Placement, int],
    objective: str,
) -> Decision:
    """Keep a measured candidate only on evidence; otherwise roll back to `baseline`.

    speed: a candidate's median must beat the baseline median by more than the noise,
    max(baseline (max-min)/2, candidate (max-min)/2, 1% of the baseline median); the fastest such
    candidate wins. memory: least VRAM among placements within 2% of the fastest median (the
    baseline: within 2% plus the noise, so it is left only on evidence).
    An empty list means the trial failed (e.g. OOM): excluded, and said so.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    stats = {p.label(): StepStats.of(t) for p, t in measured.items() if t}
    failed = [p for p, t in measured.items() if not t and p != baseline]
    failed_note = "".join(f"; {p.label()} failed (no measured step, e.g. OOM): excluded" for p in failed)

    if not measured.get(baseline):
        return Decision(baseline, False,
                        f"kept {baseline.label()}: the baseline has no measured step, nothing to compare"
                        + failed_note, stats)
    base = stats[baseline.label()]
    ok = [p for p, t in measured.items() if t and p != baseline]
    if not ok:
        return Decision(baseline, False, f"rolled back to {baseline.label()} ({base.median_ms:.1f} ms/step): "
                        "no candidate measured" + failed_note, stats)

    if objective == "speed":
        return _decide_speed(baseline, base, ok, stats, failed_note)
    return _decide_memory(baseline, base, ok, stats, vram, failed_note)


def all_resident_note(
    chosen: Placement, measured: dict[Placement, list[float]], num_layers: int, objective: str, budget_set: bool,
) -> str | None:
    """When the memory objective (offload pinned on, or --performance-mode memory) ended with every
    layer resident, why, in numbers, and what a user who needs the VRAM can do: a user who pinned
    offload on may expect streaming. None otherwise, or when the user capped VRAM (the budget
    already bounded what was tried)."""
    if (objective != "memory" or budget_set or num_layers <= 0 or chosen.resident_layers < num_layers
            or not measured.get(chosen)):
        return None
    streamed = {p: StepStats.of(t) for p, t in measured.items() if t and p.resident_layers < num_layers}
    if not streamed:
        return None
    best, s = min(streamed.items(), key=lambda kv: kv[1].median_ms)
    resident = StepStats.of(measured[chosen])
    from sglang_autoperf.settings import ENV_VRAM_BUDGET

    return (
        f"all {num_layers} DiT layers stay resident although layerwise offload is on: the fastest streamed "
        f"placement measured, {best.label()}, ran {s.median_ms:.1f} ms/step, "
        f"{(s.median_ms / resident.median_ms - 1) * 100:+.1f}% vs {resident.median_ms:.1f} ms resident (the "
        f"tolerance is {MEMORY_TOLERANCE:.0%}); to hold the DiT's VRAM lower, set {ENV_VRAM_BUDGET} (calibration "
        f"then tries only placements that fit it)"
    )


def calibration_budget(step_ms_estimate: float, max_seconds: float, max_candidates: int,
                       steps_per_trial: int) -> int:
    """How many candidate trials fit in `max_seconds` (each costs steps_per_trial x step time)."""
    if max_candidates <= 0 or max_seconds <= 0:
        return 0
    if not (step_ms_estimate > 0 and math.isfinite(step_ms_estimate)) or steps_per_trial <= 0:
        raise ValueError(f"need a positive step estimate and steps per trial, got "
                         f"{step_ms_estimate!r} ms x {steps_per_trial!r}")
    per_trial_s = steps_per_trial * step_ms_estimate / 1e3
    return max(0, min(max_candidates, int(max_seconds // per_trial_s)))


# --- torch.compile: compiled vs eager at the served shape -------------------------------------

@dataclass(frozen=True)
class CompileDecision:
    keep_compiled: bool
    reason: str
    stats: dict[str, StepStats] = field(default_factory=dict)


def decide_compile(compiled_ms: Sequence[float], eager_ms: Sequence[float]) -> CompileDecision:
    """Compile stays only on evidence that it is faster at this shape: the compiled median must beat
    the eager median by more than the noise, max(half of either spread, 1% of the eager median),
    the rule `decide` applies to placements. No compiled steps (e.g. compile failed): eager. No eager
    steps: compiled, as planned (nothing to compare)."""
    stats = {}
    if compiled_ms:
        stats["compiled"] = StepStats.of(list(compiled_ms))
    if eager_ms:
        stats["eager"] = StepStats.of(list(eager_ms))
    if not compiled_ms:
        return CompileDecision(False, "eager: no compiled step was measured", stats)
    c = stats["compiled"]
    if not eager_ms:
        return CompileDecision(True, f"compiled ({c.median_ms:.1f} ms/step): no eager step to compare", stats)
    e = stats["eager"]
    noise = measured_noise(e, c)
    gain = e.median_ms - c.median_ms
    change = -gain / e.median_ms * 100
    if gain > noise:
        return CompileDecision(True, (
            f"kept torch.compile: {c.median_ms:.1f} ms/step vs eager {e.median_ms:.1f} ms ({change:+.1f}%), "
            f"beyond the noise {noise:.1f} ms (n={c.n} vs {e.n})"), stats)
    return CompileDecision(False, (
        f"eager: compiled {c.median_ms:.1f} ms/step vs eager {e.median_ms:.1f} ms ({change:+.1f}%), not faster "
        f"by more than the noise {noise:.1f} ms (n={c.n} vs {e.n})"), stats)
