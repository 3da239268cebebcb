"""What the overlap monitor records: plain data, JSON round trip, no torch.

Times are milliseconds relative to the start of the step they belong to, read from CUDA events
after the step has finished (never on the hot path).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable


@dataclass(frozen=True)
class Placement:
    """Where a DiT's layers live: sglang's three layerwise-offload knobs (per layer list)."""

    resident_layers: int
    prefetch_layers: int
    policy: str = "leading"  # "leading" | "strided"

    def label(self) -> str:
        return f"resident={self.resident_layers} prefetch={self.prefetch_layers} {self.policy}"

    def keeping(self, other: "Placement", knobs: Iterable[str]) -> "Placement":
        """This placement with `knobs` (names from PLACEMENT_KNOBS) taken from `other`: what a
        tuned placement becomes where the user pinned some knobs to `other`'s values."""
        return replace(self, **{k: getattr(other, k) for k in knobs})

    @classmethod
    def from_dict(cls, d: Any) -> "Placement":
        """Strict: exact fields, whole numbers (no bools, no ratios), a policy name. Raises
        ValueError otherwise (a cache entry or a trace file is data from disk, not code)."""
        if not isinstance(d, dict) or set(d) != set(PLACEMENT_KNOBS):
            raise ValueError(f"placement {d!r} does not have exactly the fields {', '.join(PLACEMENT_KNOBS)}")
        for name in ("resident_layers", "prefetch_layers"):
            if type(d[name]) is not int or d[name] < 0:
                raise ValueError(f"placement {name} {d[name]!r} is not a whole number >= 0")
        if not isinstance(d["policy"], str):
            raise ValueError(f"placement policy {d['policy']!r} is not a name")
        return cls(d["resident_layers"], d["prefetch_layers"], d["policy"])


# The knobs of a Placement (field names), each of which the user may pin.
PLACEMENT_KNOBS = ("resident_layers", "prefetch_layers", "policy")


def placement_problem(p: Placement, layer_counts: Iterable[int], policies: Iterable[str]) -> str | None:
    """Why `p` cannot be applied to a DiT whose offloaded layer lists have `layer_counts` layers
    under a runtime that knows `policies`; None when it can. A resident count above a list's size
    is what sglang clamps, but a count above every list means the entry was tuned for another model."""
    counts = [int(n) for n in layer_counts]
    policies = tuple(policies)
    if p.policy not in policies:
        return f"policy {p.policy!r} is not one of {', '.join(policies)}"
    if counts and p.resident_layers > max(counts):
        return f"resident {p.resident_layers} exceeds the largest layer list ({max(counts)} layers)"
    if counts and not 1 <= p.prefetch_layers <= max(counts):
        return f"prefetch {p.prefetch_layers} is outside 1..{max(counts)}"
    return None


@dataclass(frozen=True)
class LayerTiming:
    layer: int  # index within its layer list
    compute_start_ms: float  # compute stream reached the layer (after waiting for its weights)
    compute_end_ms: float
    stall_ms: float  # compute stream idle in sglang's pre-hook: waiting for this layer's copy, and host time of its prefetch calls
    copy_start_ms: float | None = None  # None: the layer was already on the GPU (resident/prefetched earlier)
    copy_end_ms: float | None = None
    copy_bytes: int = 0

    @property
    def compute_ms(self) -> float:
        return self.compute_end_ms - self.compute_start_ms

    @property
    def copy_ms(self) -> float:
        if self.copy_start_ms is None or self.copy_end_ms is None:
            return 0.0
        return self.copy_end_ms - self.copy_start_ms


@dataclass(frozen=True)
class PassTrace:
    """One forward pass of one offloaded layer list (one LayerwiseOffloadManager)."""

    component: str  # "transformer", "transformer_2"
    layer_list: str  # e.g. "blocks", "single_transformer_blocks"
    num_layers: int
    layers: tuple[LayerTiming, ...]

    @property
    def compute_ms(self) -> float:
        return sum(t.compute_ms for t in self.layers)

    @property
    def copy_ms(self) -> float:
        return sum(t.copy_ms for t in self.layers)

    @property
    def exposed_ms(self) -> float:
        return sum(t.stall_ms for t in self.layers)

    @property
    def copy_bytes(self) -> int:
        return sum(t.copy_bytes for t in self.layers)


@dataclass(frozen=True)
class StepTrace:
    step: int
    wall_ms: float  # the whole denoising step, CUDA events on the compute stream
    placement: Placement
    passes: tuple[PassTrace, ...]
    dit_allocated_bytes: int = 0  # torch.cuda.memory_allocated() at the end of the step
    peak_allocated_bytes: int = 0  # max_memory_allocated during the step
    peak_reserved_bytes: int = 0  # max_memory_reserved during the step (the caching allocator's hold)
    reserved_bytes: int = 0  # memory_reserved() after the step
    # cudaMemGetInfo after the step: what every process holds on the card, and its size; less the
    # reserved bytes, the use outside this allocator (retune/memory.MemoryReading)
    device_used_bytes: int = 0
    device_total_bytes: int = 0
    monitor_host_ms: float = 0.0  # host time the monitor itself spent in this step (its direct cost)
    monitor_record_ms: float = 0.0  # of which in its per-layer and per-copy CUDA event records

    @property
    def compute_ms(self) -> float:
        return sum(p.compute_ms for p in self.passes)

    @property
    def copy_ms(self) -> float:
        return sum(p.copy_ms for p in self.passes)

    @property
    def exposed_ms(self) -> float:
        return sum(p.exposed_ms for p in self.passes)

    @property
    def h2d_gbps(self) -> float:
        copy_ms = self.copy_ms
        return sum(p.copy_bytes for p in self.passes) / copy_ms / 1e6 if copy_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = {
            "compute_ms": self.compute_ms,
            "copy_ms": self.copy_ms,
            "exposed_ms": self.exposed_ms,
            "h2d_gbps": self.h2d_gbps,
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepTrace":
        passes = tuple(
            PassTrace(
                component=p["component"],
                layer_list=p["layer_list"],
                num_layers=p["num_layers"],
                layers=tuple(LayerTiming(**t) for t in p["layers"]),
            )
            for p in d["passes"]
        )
        return cls(
            step=d["step"],
            wall_ms=d["wall_ms"],
            placement=Placement.from_dict(d["placement"]),
            passes=passes,
            dit_allocated_bytes=d.get("dit_allocated_bytes", 0),
            peak_allocated_bytes=d.get("peak_allocated_bytes", 0),
            peak_reserved_bytes=d.get("peak_reserved_bytes", 0),
            reserved_bytes=d.get("reserved_bytes", 0),
            device_used_bytes=d.get("device_used_bytes", 0),
            device_total_bytes=d.get("device_total_bytes", 0),
            monitor_host_ms=d.get("monitor_host_ms", 0.0),
            monitor_record_ms=d.get("monitor_record_ms", 0.0),
        )


@dataclass(frozen=True)
class StepStats:
    """Median and spread of steady steps (step times in ms)."""

    median_ms: float
    min_ms: float
    max_ms: float
    n: int

    @property
    def spread_ms(self) -> float:
        return self.max_ms - self.min_ms

    @classmethod
    def of(cls, times_ms: list[float]) -> "StepStats":
        if not times_ms:
            raise ValueError("no step times")
        return cls(statistics.median(times_ms), min(times_ms), max(times_ms), len(times_ms))


@dataclass
class TraceRecording:
    """A labelled set of traces as committed under tests/fixtures/traces/ (recorded on a GPU)."""

    source: str  # card, date, sglang version, model, workload
    layer_bytes: list[int]  # bytes of each layer in the traced layer list
    steps: list[StepTrace] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "layer_bytes": self.layer_bytes, "meta": self.meta,
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TraceRecording":
        return cls(source=d["source"], layer_bytes=list(d["layer_bytes"]), meta=dict(d.get("meta", {})),
                   steps=[StepTrace.from_dict(s) for s in d["steps"]])
