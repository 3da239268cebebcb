"""Placements per layer list: pure functions of plain data (no torch, no sglang).

sglang's flags give every offloaded layer list (one LayerwiseOffloadManager each) the same resident
count, prefetch depth and policy; the live managers take one each. For a DiT with several lists
(FLUX.1: 19 double and 38 single blocks; HunyuanVideo alike) the lists differ in what a byte of
weights buys: a block whose compute per byte is high hides its own copy best, so it is the one to
stream, and the list with the least compute per byte is the one to keep resident. This module
holds that placement (`ListPlacement`), its VRAM and streamed bytes, and the candidates for a
calibration trial, ordered by each list's measured compute per byte.
"""
from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from sglang_autoperf.plan.cost import (
    LayerCost, busiest_buffer_bytes, simulate_step, streamed_layers)
from sglang_autoperf.retune.retuner import (
    MIN_PREDICTED_GAIN, POLICIES, layer_lists, measured_layer_costs, passes_per_step)
from sglang_autoperf.trace import Placement, StepTrace


def list_key(component: str, layer_list: str) -> str:
    """How a layer list is named here and in stored results: 'transformer.single_transformer_blocks'."""
    return f"{component}.{layer_list}"


@dataclass(frozen=True)
class LayerList:
    """An offloaded layer list: its key and each block's bytes, in execution order."""

    key: str
    block_bytes: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.block_bytes)

    @property
    def total_bytes(self) -> int:
        return sum(self.block_bytes)


@dataclass(frozen=True)
class ListPlacement:
    """One Placement per layer list, in the lists' execution order."""

    lists: tuple[tuple[str, Placement], ...]

    @classmethod
    def uniform(cls, keys: Iterable[str], placement: Placement) -> "ListPlacement":
        """What sglang's flags express: the same placement on every list."""
        return cls(tuple((k, placement) for k in keys))

    def get(self, key: str) -> Placement:
        for k, p in self.lists:
            if k == key:
                return p
        raise KeyError(f"no placement for layer list {key!r}")

    def with_list(self, key: str, placement: Placement) -> "ListPlacement":
        self.get(key)  # an unknown list is an error, not a new entry
        return ListPlacement(tuple((k, placement if k == key else p) for k, p in self.lists))

    def label(self) -> str:
        return "; ".join(f"{k.rsplit('.', 1)[-1]}: {p.label()}" for k, p in self.lists)

    def to_dict(self) -> dict[str, Any]:
        return {k: {"resident_layers": p.resident_layers, "prefetch_layers": p.prefetch_layers, "policy": p.policy}
                for k, p in self.lists}

    @classmethod
    def from_dict(cls, d: Any) -> "ListPlacement":
        """Strict (data from disk): a non-empty map of list keys to placements (Placement.from_dict)."""
        if not isinstance(d, dict) or not d or not all(isinstance(k, str) and k for k in d):
            raise ValueError(f"list placement {d!r} is not a non-empty map of layer-list names to placements")
        return cls(tuple((k, Placement.from_dict(v)) for k, v in d.items()))


def _streamed(layer_list: LayerList, p: Placement) -> tuple[int, ...]:
    return streamed_layers(layer_list.count, min(p.resident_layers, layer_list.count), p.policy)


def resident_bytes(lists: Sequence[LayerList], placement: ListPlacement) -> int:
    """Block bytes the placement keeps on the card (every list)."""
    total = 0
    for ll in lists:
        streamed = set(_streamed(ll, placement.get(ll.key)))
        total += sum(b for j, b in enumerate(ll.block_bytes) if j not in streamed)
    return total


def buffer_bytes(lists: Sequence[LayerList], placement: ListPlacement) -> int:
    """Prefetch buffers at the busiest moment (plan/cost.busiest_buffer_bytes: the running list's
    window and every other streaming list's head)."""
    return busiest_buffer_bytes(
        ([ll.block_bytes[j] for j in _streamed(ll, placement.get(ll.key))], placement.get(ll.key).prefetch_layers,
         placement.get(ll.key).policy) for ll in lists)


def placed_bytes(lists: Sequence[LayerList], placement: ListPlacement) -> int:
    """What the placement puts on the card beyond the DiT's non-block weights: resident + buffers."""
    return resident_bytes(lists, placement) + buffer_bytes(lists, placement)


def streamed_bytes(lists: Sequence[LayerList], placement: ListPlacement) -> int:
    """Bytes copied host-to-device per forward pass."""
    return sum(ll.total_bytes for ll in lists) - resident_bytes(lists, placement)


# --- measured costs per list -----------------------------------------------------------------------

def layer_lists_of(steps: Sequence[StepTrace], layer_bytes: Sequence[int]) -> list[LayerList]:
    """The traced lists with their blocks' bytes (`layer_bytes` concatenated in trace order, as
    TraceRecording stores them)."""
    out, offset = [], 0
    for component, name, n in layer_lists(steps):
        out.append(LayerList(list_key(component, name), tuple(int(b) for b in layer_bytes[offset:offset + n])))
        offset += n
    if offset != len(layer_bytes):
        raise ValueError(f"layer_bytes has {len(layer_bytes)} entries but the traces hold {offset} layers")
    return out


def compute_per_byte(steps: Sequence[StepTrace], layer_bytes: Sequence[int]) -> dict[str, float]:
    """Measured compute per GiB of weights, per list: the median compute of each block over every
    traced pass, summed over the list, over its bytes. A list with more of it hides its own copies
    better, so it is the one to stream; the one with least is kept resident first."""
    lists = layer_lists_of(steps, layer_bytes)
    return _per_byte(lists, measured_layer_costs(list(steps), list(layer_bytes), fallback_h2d_bytes_per_s=1.0))


def _per_byte(lists: Sequence[LayerList], costs: Sequence[LayerCost]) -> dict[str, float]:
    return {ll.key: sum(c.compute_s for c in costs if c.group == g) * 1e3 / (ll.total_bytes / 2**30)
            for g, ll in enumerate(lists)}


def residency_order(per_byte: dict[str, float]) -> list[str]:
    """Lists in the order residency is given to them: least compute per byte first."""
    return sorted(per_byte, key=lambda k: per_byte[k])


def simulate_lists(layers: Sequence[LayerCost], lists: Sequence[LayerList], placement: ListPlacement,
                   passes: int):
    """plan/cost.simulate_step for a per-list placement (its simulation takes one policy)."""
    policies = {placement.get(ll.key).policy for ll in lists}
    if len(policies) != 1:
        raise ValueError(f"the step simulation takes one policy for every list, not {sorted(policies)}")
    return simulate_step(layers, [min(placement.get(ll.key).resident_layers, ll.count) for ll in lists],
                         [max(1, placement.get(ll.key).prefetch_layers) for ll in lists], policies.pop(), passes)


def _anchored(layers: list[LayerCost], lists: Sequence[LayerList], current: ListPlacement, passes: int,
              measured_ms: float) -> tuple[list[LayerCost], float]:
    """(layers, offset_ms) so that the simulation of `current` plus the offset is its measured step.
    A simulated step above the measured one is put on the copies (scaled), not shifted: a shift
    would carry the copies' error into placements that copy nothing."""
    sim = simulate_lists(layers, lists, current, passes)
    if sim.copy_s > 0 and measured_ms < sim.step_s * 1e3:
        scale = max(measured_ms / 1e3, sim.compute_s) / sim.step_s
        layers = [replace(lc, copy_s=lc.copy_s * scale) for lc in layers]
        sim = simulate_lists(layers, lists, current, passes)
    return layers, max(0.0, measured_ms - sim.step_s * 1e3)


@dataclass(frozen=True)
class StepPredictor:
    """Predicted step (ms) of any per-list placement from traces taken at `current`."""

    lists: list[LayerList]
    layers: list[LayerCost]
    passes: int
    offset_ms: float
    measured_ms: float
    per_byte: dict[str, float]

    @classmethod
    def from_traces(cls, steps: Sequence[StepTrace], layer_bytes: Sequence[int], current: ListPlacement,
                    fallback_h2d_bytes_per_s: float | None = None) -> "StepPredictor":
        lists = layer_lists_of(steps, layer_bytes)
        layers = measured_layer_costs(list(steps), list(layer_bytes), fallback_h2d_bytes_per_s=fallback_h2d_bytes_per_s)
        # One link rate for every block: the copies share one link, and a block's own traced rate can
        # be far off (FLUX.1 at 9 per list, H200: one block at 11.5 GB/s, the median 55.2 GB/s, as the
        # sweep's pinned copy measured 55.1: benchmarks/results/2026-11-29-h200-sweep).
        link = statistics.median(lc.bytes / lc.copy_s for lc in layers if lc.copy_s > 0)
        layers = [replace(lc, copy_s=lc.bytes / link) for lc in layers]
        passes = passes_per_step(steps)
        measured = statistics.median(s.wall_ms for s in steps)
        anchored, offset = _anchored(layers, lists, current, passes, measured)
        return cls(lists, anchored, passes, offset, measured, _per_byte(lists, layers))

    def __call__(self, placement: ListPlacement) -> float:
        return simulate_lists(self.layers, self.lists, placement, self.passes).step_s * 1e3 + self.offset_ms


@dataclass(frozen=True)
class ListCandidate:
    placement: ListPlacement
    predicted_step_ms: float
    placed_bytes: int  # resident blocks + prefetch buffers
    reason: str


def fill_resident(lists: Sequence[LayerList], base: ListPlacement, order: Sequence[str],
                  max_placed_bytes: int) -> ListPlacement:
    """`base` with each list in `order` given the most resident layers (from its count in `base`
    up) that keep placed_bytes within `max_placed_bytes`, one list after the other. Scanned from
    the top: a list made fully resident drops its prefetch buffers, so one more layer can fit
    where one fewer did not."""
    counts = {ll.key: ll.count for ll in lists}
    placement = base
    for key in order:
        p = placement.get(key)
        for count in range(counts[key], p.resident_layers, -1):
            grown = placement.with_list(key, Placement(count, p.prefetch_layers, p.policy))
            if placed_bytes(lists, grown) <= max_placed_bytes:
                placement = grown
                break
    return placement


def _with_counts(base: ListPlacement, counts: dict[str, int]) -> ListPlacement:
    return ListPlacement(tuple((k, Placement(counts.get(k, p.resident_layers), p.prefetch_layers, p.policy))
                               for k, p in base.lists))


def _shapes(current: ListPlacement, prefetch_choices: Iterable[int], fixed: frozenset) -> list[ListPlacement]:
    """Prefetch per list and one policy for all (the simulation's), as the unpinned knobs allow."""
    policies = [current.lists[0][1].policy] if "policy" in fixed else \
        [current.lists[0][1].policy] + [p for p in POLICIES if p != current.lists[0][1].policy]
    depths = [[p.prefetch_layers] if "prefetch_layers" in fixed else
              sorted({int(d) for d in prefetch_choices if int(d) >= 1} | {p.prefetch_layers}) for _, p in current.lists]
    return [ListPlacement(tuple((k, Placement(p.resident_layers, d, pol)) for (k, p), d in zip(current.lists, ds)))
            for pol in policies for ds in itertools.product(*depths)]


def _residencies(lists: Sequence[LayerList], shape: ListPlacement, order: Sequence[str], max_placed_bytes: int,
                 fixed: frozenset) -> list[ListPlacement]:
    """The fullest placements of this shape: each resident count of the list kept resident first,
    the others filled in order. Residency pinned: the shape as it is."""
    if "resident_layers" in fixed:
        return [shape] if placed_bytes(lists, shape) <= max_placed_bytes else []
    first, rest = order[0], list(order[1:])
    out = []
    for count in range(next(ll.count for ll in lists if ll.key == first) + 1):
        start = _with_counts(shape, {ll.key: 0 for ll in lists} | {first: count})
        if placed_bytes(lists, start) <= max_placed_bytes:
            out.append(fill_resident(lists, start, rest, max_placed_bytes))
    return out


def propose_lists(
    steps: Sequence[StepTrace],
    layer_bytes: Sequence[int],
    current: ListPlacement,
    max_placed_bytes: int,
    *,
    max_candidates: int = 3,
    prefetch_choices: Iterable[int] = (1, 2, 3, 4, 6, 8),
    fixed: Iterable[str] = (),
    fallback_h2d_bytes_per_s: float | None = None,
) -> list[ListCandidate]:
    """Per-list placements worth a calibration trial, best predicted first (speed).

    Every candidate keeps its resident blocks and prefetch buffers within `max_placed_bytes`
    (retune/memory.MemoryCorrection.placeable_bytes: the measured limit less the measured fixed
    use and margin); pinned knobs (`fixed`, Placement field names) stay at `current`'s values.
    Residency goes first to the list with the least measured compute per byte; each candidate is
    the fullest placement for one resident count of that list. The prediction is the step
    simulation on the traces' per-layer costs, anchored on the traced steps' median. Where
    `current` itself is over `max_placed_bytes` the fastest that fit are proposed, faster or not.
    """
    fixed = frozenset(fixed)
    if not steps or max_candidates <= 0:
        return []
    predict = StepPredictor.from_traces(steps, layer_bytes, current, fallback_h2d_bytes_per_s)
    lists, per_byte, measured = predict.lists, predict.per_byte, predict.measured_ms
    order = residency_order(per_byte)
    options: dict[ListPlacement, float] = {}
    for shape in _shapes(current, prefetch_choices, fixed):
        for p in _residencies(lists, shape, order, max_placed_bytes, fixed):
            if p != current and p not in options:
                options[p] = predict(p)
    over = placed_bytes(lists, current) > max_placed_bytes
    limit = float("inf") if over else measured * (1 - MIN_PREDICTED_GAIN)

    def rank(item):  # predicted step in 0.5% buckets, then the lists in `order` more resident, then fewer bytes
        p, ms = item
        return (round(ms / (0.005 * measured)), tuple(-p.get(k).resident_layers for k in order), placed_bytes(lists, p))

    chosen: list[ListCandidate] = []
    for p, ms in sorted(((p, ms) for p, ms in options.items() if ms < limit), key=rank):
        size = placed_bytes(lists, p)
        if any(c.placed_bytes <= size and c.predicted_step_ms <= ms * 1.005 for c in chosen):
            continue  # as fast (within 0.5%) with no more bytes on the card: already proposed
        why = "the current placement is over the limit; " if over else ""
        chosen.append(ListCandidate(p, ms, size, (
            f"{why}predicted {measured:.1f} -> {ms:.1f} ms/step, {size / 2**30:.2f} GiB placed; residency order by "
            f"measured compute per GiB: " + ", ".join(f"{k.rsplit('.', 1)[-1]} {per_byte[k]:.2f} ms" for k in order))))
        if len(chosen) >= max_candidates:
            break
    return chosen
