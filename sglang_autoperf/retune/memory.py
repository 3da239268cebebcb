"""Residency sized from measured memory: pure functions of plain numbers (no torch, no sglang).

The startup memory model predicts a peak before anything ran; after the first measured steps the
worker knows what the process really peaked at: the caching allocator's reserved peak plus what
lives outside it (CUDA context, cuBLAS workspaces: total - free - reserved). Everything a placement
does not change (non-block weights, activations, other components, context) is then measured as
`fixed_bytes` = peak - the placement's placed bytes (retune/lists.placed_bytes); another placement's
peak is that plus its own placed bytes. What is kept free beyond that prediction is its measured
error (PEAK_ERROR_MARGIN_BYTES), plus what the caller knows the reading did not include (the
compressed store's staging buffer, measure/compressed.py).

Why this is enough, measured (benchmarks/results/2026-11-29-h200-sweep, H200, FLUX.1-dev-shaped,
1024x1024): from the one reading of the 16 GiB start placement, the peaks of all 98 placements the
sweep measured (resident counts per list, prefetch 1-12, both policies) came out within -0.20 to
+0.44 GiB (measured minus predicted); the fragmentation at that reading was 0.81 GiB. The startup
model had predicted 15.9 GiB for a placement that peaked at 13.8 GiB.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from sglang_autoperf.retune.lists import LayerList, ListPlacement, fill_resident, placed_bytes
from sglang_autoperf.trace import Placement

# Kept free beyond the predicted peak: the largest error of the prediction from one reading, measured
# over every placement of three in-process sweeps on an H200 (measured - predicted): FLUX.1 -0.20 to
# +0.44 GiB (98 placements, benchmarks/results/2026-11-29-h200-sweep), FLUX.2-klein -0.36 to +0.10
# (34) and Z-Image -0.00 to +0.19 (27, benchmarks/results/2026-11-29-h200-families). The allocator's
# fragmentation at the reading (0.48-1.42 GiB there) was kept free before; it is already inside the
# reserved peak the reading measured, and counting it twice held FLUX.2-klein's candidates to 2.65
# GiB placed at 8 GiB free, its choice 1.246x the sweep's best point that fit.
PEAK_ERROR_MARGIN_BYTES = 512 << 20


def _whole_bytes(d: dict, name: str) -> int:
    value = d.get(name)
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} {value!r} is not a whole number of bytes >= 0")
    return value


@dataclass(frozen=True)
class MemoryReading:
    """What a worker measured over some steps at one placement."""

    reserved_peak_bytes: int  # torch.cuda.max_memory_reserved over the steps
    allocated_peak_bytes: int  # torch.cuda.max_memory_allocated over the same steps
    non_allocator_bytes: int  # (total - free) - memory_reserved, read after the steps

    @property
    def peak_bytes(self) -> int:
        return self.reserved_peak_bytes + self.non_allocator_bytes

    @classmethod
    def from_dict(cls, d: Any) -> "MemoryReading":
        if not isinstance(d, dict):
            raise ValueError(f"memory reading {d!r} is not a map")
        return cls(*(_whole_bytes(d, name) for name in ("reserved_peak_bytes", "allocated_peak_bytes",
                                                          "non_allocator_bytes")))


@dataclass(frozen=True)
class MemoryCorrection:
    """The measured memory picture of one worker, stored with the tuning result so that the next
    start sizes residency without measuring (and the startup model learns its error)."""

    limit_bytes: int  # the real limit: free memory at start, or SGLANG_AUTOPERF_VRAM_BUDGET
    predicted_peak_bytes: int  # the startup model's peak for the measured placement
    measured_peak_bytes: int  # reserved peak + non-allocator use at that placement
    fixed_bytes: int  # measured peak - the placement's placed bytes: what every placement carries
    margin_bytes: int  # kept free beyond the predicted peak (PEAK_ERROR_MARGIN_BYTES + what the caller adds)
    placement: dict[str, Any]  # the measured ListPlacement (to_dict)
    # what other processes held on the card at the reading (in fixed_bytes): a later start beside
    # more or less of them moves fixed_bytes by the difference (`beside`)
    others_bytes: int = 0

    @property
    def correction_bytes(self) -> int:
        """Measured minus predicted: negative where the startup model over-predicts."""
        return self.measured_peak_bytes - self.predicted_peak_bytes

    @property
    def placeable_bytes(self) -> int:
        """Resident blocks + prefetch buffers that fit under the limit with the margin kept free."""
        return self.limit_bytes - self.margin_bytes - self.fixed_bytes

    def peak_of(self, lists: Sequence[LayerList], placement: ListPlacement) -> int:
        return self.fixed_bytes + placed_bytes(lists, placement)

    def fits(self, lists: Sequence[LayerList], placement: ListPlacement) -> bool:
        return self.peak_of(lists, placement) + self.margin_bytes <= self.limit_bytes

    def beside(self, others_bytes: int, limit_bytes: int) -> "MemoryCorrection":
        """The same process beside `others_bytes` of other processes, under `limit_bytes`."""
        return replace(self, fixed_bytes=self.fixed_bytes - self.others_bytes + int(others_bytes),
                       others_bytes=int(others_bytes), limit_bytes=int(limit_bytes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "MemoryCorrection":
        """Strict (a cache entry is data from disk): exact fields, whole byte counts, a placement."""
        names = ("limit_bytes", "predicted_peak_bytes", "measured_peak_bytes", "fixed_bytes", "margin_bytes")
        if not isinstance(d, dict) or not set(names) | {"placement"} <= set(d) <= set(names) | {"placement", "others_bytes"}:
            raise ValueError(f"memory correction {d!r} does not have exactly the fields {', '.join(names)}, placement"
                             f" (and others_bytes)")
        placement = ListPlacement.from_dict(d["placement"]).to_dict()
        fixed = d["fixed_bytes"]
        if type(fixed) is not int:  # may be negative in principle (a placement model over its truth)
            raise ValueError(f"fixed_bytes {fixed!r} is not a whole number")
        others = _whole_bytes(d, "others_bytes") if "others_bytes" in d else 0
        return cls(*(_whole_bytes(d, n) for n in names[:3]), fixed, _whole_bytes(d, "margin_bytes"), placement, others)


def memory_correction(reading: MemoryReading, lists: Sequence[LayerList], placement: ListPlacement, *,
                      limit_bytes: int, predicted_peak_bytes: int, unread_bytes: int = 0) -> MemoryCorrection:
    """The correction from one reading at `placement` against the real limit; `unread_bytes`: what
    other placements will hold that the reading did not (kept free with the error margin)."""
    if limit_bytes <= 0:
        raise ValueError(f"limit {limit_bytes!r} is not a positive number of bytes")
    peak = reading.peak_bytes
    return MemoryCorrection(
        limit_bytes=int(limit_bytes), predicted_peak_bytes=int(predicted_peak_bytes), measured_peak_bytes=peak,
        fixed_bytes=peak - placed_bytes(lists, placement), margin_bytes=PEAK_ERROR_MARGIN_BYTES + max(0, int(unread_bytes)),
        placement=placement.to_dict(),
    )


def corrected_startup_peak(predicted_peak_bytes: int, correction: MemoryCorrection) -> int:
    """What the startup model should predict for the same family and shape next time: its own
    prediction moved by the error measured here (for the same placement)."""
    return predicted_peak_bytes + correction.correction_bytes


def fill_residency(lists: Sequence[LayerList], correction: MemoryCorrection, base: ListPlacement,
                   order: Sequence[str]) -> ListPlacement | None:
    """The resident count per list that fills the limit: `base`'s prefetch and policy, resident
    layers given list by list in `order` (the first is kept resident first; retune/lists.
    residency_order), never a placement whose peak plus the measured margin exceeds the limit.
    Filled from nothing resident, so a placement over the limit shrinks. None where even nothing
    resident does not fit."""
    empty = ListPlacement(tuple((k, Placement(0, p.prefetch_layers, p.policy)) for k, p in base.lists))
    if not correction.fits(lists, empty):
        return None
    return fill_resident(lists, empty, order, correction.placeable_bytes)
