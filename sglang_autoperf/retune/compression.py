"""Whether compressed layer streaming stays (issue 18): an A/B at the placement the worker runs.

Both stores are held until this decides, and switching between them costs nothing (a decoded layer
is bit for bit the raw one), so the A/B runs on real steps (the calibration warmup's last AB_STEPS, or
served requests'): pairs of steps raw,
then pairs compressed, alternating; only the second step of a pair is timed, since the first
still runs on layers the previous mode prefetched. Compressed stays only when its median step is
faster than raw's by more than the noise.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# Beyond this the difference is the codec's, not the card's: the same placement differed by up to
# 0.9% between blocks of one process (benchmarks/results/2026-11-29-h200-compress/, reference
# blocks), and compression cost 1.7-2.7% where the copies already hid.
NOISE = 0.02
SAMPLES_PER_ARM = 3
PAIR = 2  # steps per mode before switching; the second is timed
AB_STEPS = 2 * PAIR * SAMPLES_PER_ARM  # the steps one A/B takes: SAMPLES_PER_ARM timed steps per mode


@dataclass
class CompressionAB:
    raw_ms: list[float] = field(default_factory=list)
    compressed_ms: list[float] = field(default_factory=list)
    position: int = 0  # steps run under the A/B (first steps of requests excluded)

    def compressed_now(self) -> bool:
        """The mode of the next step: raw, raw, compressed, compressed, raw, ..."""
        return (self.position // PAIR) % 2 == 1

    def timed_now(self) -> bool:
        return self.position % PAIR == PAIR - 1

    def advance(self) -> None:
        self.position += 1

    def record(self, compressed: bool, ms: float) -> None:
        (self.compressed_ms if compressed else self.raw_ms).append(float(ms))

    @property
    def done(self) -> bool:
        return len(self.raw_ms) >= SAMPLES_PER_ARM and len(self.compressed_ms) >= SAMPLES_PER_ARM

    def keep_compressed(self) -> bool:
        return self.compressed_median() < self.raw_median() * (1 - NOISE)

    def raw_median(self) -> float:
        return statistics.median(self.raw_ms)

    def compressed_median(self) -> float:
        return statistics.median(self.compressed_ms)

    def summary(self) -> str:
        kept = "kept compressed streaming" if self.keep_compressed() else "kept raw streaming"
        return (f"{kept}: {self.compressed_median():.1f} ms compressed vs {self.raw_median():.1f} ms raw a step "
                f"(medians of {len(self.compressed_ms)} and {len(self.raw_ms)}; compressed must be > "
                f"{NOISE:.0%} faster)")
