"""Cost model: per-layer compute and copy time, a step simulation of layerwise offload, and VRAM.

Pure functions over plain numbers; no torch, no sglang. Every constant names the measurement it
reproduces (docs/measured.md). The planner uses this to prune; measurement on the GPU decides.
"""
from __future__ import annotations

import bisect

from dataclasses import dataclass
from typing import Iterable, Sequence

from sglang_autoperf.sglang_adapter.contract import prefetch_per_group, resident_per_group, streamed_layers
from sglang_autoperf.units import GiB

# Part of every tuning cache key: bump when a prediction changes for the same inputs, so that
# placements chosen under the old model are measured again instead of reused.
COST_MODEL_VERSION = 2


# --- compute efficiency ---------------------------------------------------------------------
# Fraction of the card's dense bf16 rate reached, fit to docs/measured.md §1 (H200, eager, SDPA flash):
# Wan2.1-14B block 480p 81f 98.5 ms and 720p 81f 411 ms (two equations, two unknowns);
# the same pair then gives FLUX double 3.22 ms (measured 3.12) and single 2.80 ms (2.83).
EFF_LINEAR = 0.634
EFF_ATTENTION = 0.365

# Delay from a prefetch's issue to its first byte (hook, event and per-tensor launch costs); it
# overlaps other copies in flight, so only a queue of one (prefetch 1) pays it. Between the
# Wan2.1-1.3B-shaped 7,800-token runs (87 MB blocks, docs/measured.md §1): prefetch 1 cost +72% (H200,
# 2.6 ms) and +17% (H100, 0.9 ms) per block; prefetch 2 hid the copies on both.
COPY_ISSUE_LATENCY_S = 1.5e-3

# Joint-attention families (MMDiT): text and image tokens share one attention; "double" blocks
# hold separate image/text weights (half the params see each stream), "single" blocks see both.
# Names are the module names of sglang's pipeline configs (probe/model.py family; FLUX.2 is "flux"
# there too); Z-Image's single-stream blocks attend over text and image tokens together.
MMDIT_FAMILIES = frozenset({"flux", "qwen_image", "hunyuan_video", "stablediffusion3", "zimage", "longcat_image"})

# --- memory ---------------------------------------------------------------------------------
# CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers are outside the allocator's view.
CONTEXT_RESERVE_BYTES = int(1.5 * GiB)
# Caching-allocator fragmentation, as a share of what the plan places on the card. With the
# 1.5 GiB above, #31538 (Qwen-Image, 32 GB RTX 5090, 1024^2, prefetch 1: 34 resident ran, 38 OOM)
# comes out at a limit of 36.
FRAGMENTATION_FRACTION = 0.065
# Activation peak = tokens x hidden x 2 bytes x factor. The factor absorbs everything that
# scales with the shape while the DiT is on the card (block intermediates, attention workspace,
# latents, and for video the VAE decode that follows with the DiT still resident).
#  wan: Wan2.2-A14B 1280x720x81f peaked at 108 GB with both experts resident (#21248): 57.2 GB
#       DiTs + 0.5 GB VAE + reserve leave 42 GB over 75,600 tokens x 5120. The umT5 encoder is
#       assumed off the card at that peak: the larger (safer) of the two readings.
#  qwen_image: #31538 (RTX 5090, Qwen-Image, prefetch 1, nothing resident) peaked at 5.43 GB:
#       1.36 GB of prefetch buffers + 0.3 GB non-block/VAE leave ~3.7 GB; 130 gives 3.5 GB at 1024^2.
#  flux, zimage: each fitted to the all-streamed point (the smallest placement) of one H200 sweep,
#       1024^2, 4,096 + 512 tokens, buffers as sglang holds them (busiest_buffer_bytes below),
#       rounded up (tests/fixtures/memory/h200-*-1024-sweep-2026-11-29.json):
#       flux: FLUX.2-klein-4B 0/0 resident, prefetch 2, peaked at 5.26 GiB -> 44.8 (was 130, unmeasured);
#       zimage: Z-Image-Turbo 0 resident, prefetch 2, peaked at 5.43 GiB -> 34.6.
#       The activations alone (allocated peak - weights - components, everything resident) are 0.60
#       and 0.52 GiB (factors 23 and 16): the rest is what the reserve above misses at small placements
#       there (1.74-1.89 GiB outside the allocator, 0.49-0.86 GiB of fragmentation), so the factors
#       over-predict large placements instead (everything resident: +0.5 GiB, FLUX.1-dev +1.5 GiB).
ACTIVATION_FACTOR = {
    "wan": 54.5,
    "hunyuan_video": 54.5,
    "qwen_image": 130.0,
    "flux": 45.0,
    "zimage": 35.0,
}
DEFAULT_ACTIVATION_FACTOR = 130.0


@dataclass(frozen=True)
class LayerCost:
    compute_s: float  # one forward pass through this block
    copy_s: float  # host-to-device copy of its weights
    bytes: int
    group: int  # index of its ModuleList (each gets its own offload manager in sglang)
    local_index: int


def attention_flops(family: str, tokens: int, text_tokens: int, hidden: int) -> float:
    """Attention-core FLOPs (QK^T and PV) of one block for one pass."""
    if family in MMDIT_FAMILIES:
        seq = tokens + text_tokens
        return 4.0 * seq * seq * hidden
    # self-attention over image/video tokens, cross-attention to the text (Wan-style)
    return 4.0 * tokens * tokens * hidden + 4.0 * tokens * text_tokens * hidden


def linear_flops(family: str, group_name: str, params: int, tokens: int, text_tokens: int) -> float:
    if family in MMDIT_FAMILIES:
        if "single" in group_name:
            return 2.0 * params * (tokens + text_tokens)
        # dual-stream: half the weights on each stream
        return params * (tokens + text_tokens)
    return 2.0 * params * tokens


def block_compute_seconds(
    *, family: str, group_name: str, params: int, hidden: int, tokens: int, text_tokens: int,
    flops_per_s: float,
) -> float:
    lin = linear_flops(family, group_name, params, tokens, text_tokens)
    att = attention_flops(family, tokens, text_tokens, hidden)
    return lin / (flops_per_s * EFF_LINEAR) + att / (flops_per_s * EFF_ATTENTION)


def layer_costs(dit, family: str, tokens: int, text_tokens: int, flops_per_s: float,
                h2d_bytes_per_s: float, seq_parallel: int = 1) -> list[LayerCost]:
    """Per-block costs for one forward pass, in execution order.

    `dit` is a DitProfile-like object (block_groups with name/count/block_bytes/block_params,
    hidden_size). Sequence parallelism of degree k gives each GPU 1/k of the tokens and 1/k of
    the attention (Ulysses splits heads); communication is not modelled.
    """
    out: list[LayerCost] = []
    sp = max(1, int(seq_parallel))
    for g, group in enumerate(dit.block_groups):
        for j in range(group.count):
            params = group.block_params[j]
            nbytes = group.block_bytes[j]
            lin = linear_flops(family, group.name, params, tokens, text_tokens) / sp
            att = attention_flops(family, tokens, text_tokens, dit.hidden_size) / sp
            compute = lin / (flops_per_s * EFF_LINEAR) + att / (flops_per_s * EFF_ATTENTION)
            out.append(LayerCost(compute, nbytes / h2d_bytes_per_s, nbytes, g, j))
    return out


# --- residency layout: how sglang turns the flags into counts per list: sglang_adapter.contract

def prefetch_buffer_layers(prefetch: int, policy: str) -> int:
    """Streamed layers on the card at once: `leading` issues a batch of P at every P-th layer
    while the previous batch is still being computed (2P; P+1 when P=1); `strided` tops up to
    P ahead of the running layer (P+1)."""
    if policy == "leading" and prefetch > 1:
        return 2 * prefetch
    return prefetch + 1


# --- compressed streaming (issue 18) --------------------------------------------------------
# The lossless bf16 codec (kernels/exponent_codec) leaves 0.7508 of the bytes of the random FLUX.1
# checkpoint's 57 blocks, and its decoder writes ~1.6 TB/s of bf16 on an H200 (1.50-1.70 per
# block): benchmarks/results/2026-11-29-h200-kernels/. The decode runs on the copy stream after
# its layer's copy, so it adds to that layer's copy time.
CODEC_RATIO = 0.7508
DECODE_BYTES_PER_S = 1.6e12
# Compression is tried only where the simulation says it takes this much off the step: on the
# H200 it cost 1.7-2.7% where copies already hid (FLUX 1024x1024, 18 per list resident, prefetch
# 4-6) and gave 1.19-1.26x where they did not (benchmarks/results/2026-11-29-h200-compress/).
COMPRESS_MIN_GAIN = 0.05


def compressed_layers(layers: Sequence[LayerCost], ratio: float = CODEC_RATIO,
                      decode_bytes_per_s: float = DECODE_BYTES_PER_S) -> list[LayerCost]:
    """The same layers streamed in the codec's bytes: copy x ratio, plus the decode of the bf16 bytes."""
    return [LayerCost(lc.compute_s, lc.copy_s * ratio + lc.bytes / decode_bytes_per_s, lc.bytes, lc.group,
                      lc.local_index) for lc in layers]


# --- step simulation ------------------------------------------------------------------------

@dataclass(frozen=True)
class StepSim:
    step_s: float  # wall time of one denoise step (all passes)
    compute_s: float  # sum of block compute in the step
    copy_s: float  # sum of copy time in the step
    exposed_s: float  # time the compute stream waited for a copy

    @property
    def hidden(self) -> bool:
        return self.exposed_s <= 0.02 * max(self.step_s, 1e-12)


class _OffloadSimulation:
    """sglang's LayerwiseOffloadManagers over a sequence of forward passes, one clock for the
    compute stream and one PCIe link that every manager's copies share (serialized)."""

    def __init__(self, layers: Sequence[LayerCost], resident: Sequence[int], prefetch: Sequence[int], policy: str):
        self.groups: dict[int, list[LayerCost]] = {}
        for lc in layers:
            self.groups.setdefault(lc.group, []).append(lc)
        self.order = sorted(self.groups)
        self.prefetch = {g: prefetch[gi] for gi, g in enumerate(self.order)}
        self.streamed = {g: streamed_layers(len(self.groups[g]), resident[gi], policy)
                         for gi, g in enumerate(self.order)}
        self.stream_sets = {g: set(s) for g, s in self.streamed.items()}
        self.policy = policy
        self.t = 0.0  # compute stream clock
        self.link_free = 0.0
        self.stream_end = {g: 0.0 for g in self.order}  # last copy end on each manager's stream
        self.ready: dict[int, dict[int, float]] = {g: {} for g in self.order}  # streamed layer -> copy end
        self.compute_s = self.copy_s = self.exposed_s = 0.0  # sums over the measured passes

    def issue(self, g: int, j: int, at: float) -> None:
        if j not in self.stream_sets[g] or j in self.ready[g]:
            return
        start = max(at + COPY_ISSUE_LATENCY_S, self.link_free)
        end = start + self.groups[g][j].copy_s
        self.link_free = end
        self.stream_end[g] = max(self.stream_end[g], end)
        self.ready[g][j] = end

    def next_streamed(self, g: int, after: int, count: int) -> list[int]:
        s = self.streamed[g]
        if not s:
            return []
        k = bisect.bisect_right(s, after)
        return [s[(k + o) % len(s)] for o in range(min(count, len(s)))]

    def start_pass(self, g: int) -> None:
        """Layer 0's pre-hook: drop stale copies, drain the copy stream, issue the head."""
        head = self.next_streamed(g, -1, self.prefetch[g])
        for j in list(self.ready[g]):
            if j not in head:
                del self.ready[g][j]
        self.t = max(self.t, self.stream_end[g]) if self.ready[g] else self.t
        for j in head:
            self.issue(g, j, self.t)

    def run_layer(self, g: int, i: int, measuring: bool) -> None:
        lc, n, P = self.groups[g][i], len(self.groups[g]), self.prefetch[g]
        if i == 0:
            self.start_pass(g)
        start = self.t
        if i in self.stream_sets[g]:
            if i not in self.ready[g]:  # not prefetched: synchronous load
                self.issue(g, i, self.t)
            start = max(self.t, self.ready[g][i])
        if measuring:
            self.exposed_s += start - self.t
            self.compute_s += lc.compute_s
            self.copy_s += lc.copy_s if i in self.stream_sets[g] else 0.0
        if self.policy == "strided":
            for j in self.next_streamed(g, i, P):
                self.issue(g, j, start)
        elif i % P == 0:
            for j in range(i + P, i + 2 * P):
                self.issue(g, j % n, start)
        self.t = start + lc.compute_s
        self.ready[g].pop(i, None)  # post-hook release

    def run_pass(self, measuring: bool) -> None:
        for g in self.order:
            if self.streamed[g]:
                for i in range(len(self.groups[g])):
                    self.run_layer(g, i, measuring)
                continue
            for lc in self.groups[g]:  # fully resident list: compute only
                self.t += lc.compute_s
                self.compute_s += lc.compute_s if measuring else 0.0


def simulate_step(
    layers: Sequence[LayerCost],
    resident: Sequence[int],
    prefetch: Sequence[int],
    policy: str,
    passes: int,
    warm_passes: int = 2,
) -> StepSim:
    """Discrete simulation of sglang's LayerwiseOffloadManager over `passes` forward passes.

    Rules read from sglang 0.5.23: one manager per ModuleList; a prefetch issued in a layer's
    pre-hook starts once the compute issued before it has finished (copy_stream.wait_stream) and
    copies share one PCIe link (serialized); layer 0's pre-hook drains its copy stream and issues
    the head of the stream; `leading` prefetches layers i+P..i+2P-1 (mod n) when i % P == 0,
    `strided` keeps the next P streamed layers in flight; a layer is released after it runs.
    Warm passes are simulated first so that wrap-around prefetches reach steady state.
    """
    sim = _OffloadSimulation(layers, resident, prefetch, policy)
    for _ in range(warm_passes):
        sim.run_pass(measuring=False)
    t_measure = sim.t
    for _ in range(passes):
        sim.run_pass(measuring=True)
    return StepSim(step_s=sim.t - t_measure, compute_s=sim.compute_s, copy_s=sim.copy_s, exposed_s=sim.exposed_s)


def resident_step(layers: Sequence[LayerCost], passes: int) -> StepSim:
    c = sum(lc.compute_s for lc in layers) * passes
    return StepSim(c, c, 0.0, 0.0)


# --- memory ---------------------------------------------------------------------------------

def activation_bytes(family: str, tokens: int, text_tokens: int, hidden: int,
                     batch: int = 1, seq_parallel: int = 1) -> int:
    factor = ACTIVATION_FACTOR.get(family, DEFAULT_ACTIVATION_FACTOR)
    seq = tokens + (text_tokens if family in MMDIT_FAMILIES else 0)
    return int(seq / max(1, seq_parallel) * hidden * 2 * factor * max(1, batch))


@dataclass(frozen=True)
class MemoryBreakdown:
    dit_weights: int  # non-block weights + resident blocks, every DiT
    prefetch_buffers: int
    activations: int
    components: int  # non-DiT components kept on the card
    reserve: int  # context + fragmentation

    @property
    def total(self) -> int:
        return self.dit_weights + self.prefetch_buffers + self.activations + self.components + self.reserve

    def to_dict(self) -> dict:
        return {
            "dit_weights": self.dit_weights, "prefetch_buffers": self.prefetch_buffers,
            "activations": self.activations, "components": self.components,
            "reserve": self.reserve, "total": self.total,
        }


def memory_breakdown(*, dit_weights: int, prefetch_buffers: int, activations: int,
                     components: int) -> MemoryBreakdown:
    placed = dit_weights + prefetch_buffers + activations + components
    reserve = CONTEXT_RESERVE_BYTES + int(FRAGMENTATION_FRACTION * placed)
    return MemoryBreakdown(dit_weights, prefetch_buffers, activations, components, reserve)


def busiest_buffer_bytes(streams: Iterable[tuple[Sequence[int], int, str]]) -> int:
    """Prefetch buffers at the busiest moment of layer lists that run one after another; each stream
    is one list's streamed blocks' bytes, its prefetch and its policy. While one list runs it holds its
    window (its biggest streamed blocks, prefetch_buffer_layers of them) and every other streaming list
    holds the head of its next pass (prefetch blocks), which sglang's pre-hooks issue at the end of that
    list's previous pass (the wrap-around). The H200 sweep of 2026-11-29 measured the head:
    FLUX.1 with 15 doubles resident and the singles streamed at prefetch 6 instead of 2 peaked 1.07 GiB
    higher, where the windows alone predicted no change (benchmarks/results/2026-11-29-h200-sweep)."""
    window, head = [], []
    for streamed, prefetch, policy in streams:
        biggest = sorted(streamed, reverse=True)
        window.append(sum(biggest[:prefetch_buffer_layers(max(1, prefetch), policy)]))
        head.append(sum(biggest[:max(1, prefetch)]))
    return max((w + sum(head) - h for w, h in zip(window, head) if w), default=0)


def dit_placed_bytes(dits: Iterable, resident_setting: float | None, prefetch_setting: float,
                     policy: str) -> tuple[int, int]:
    """(weights kept on the card, prefetch buffers) summed over every DiT (both Wan2.2 experts:
    counted together, since the idle expert's resident set is not guaranteed released).
    resident_setting None = fully resident (no layerwise offload)."""
    weights = buffers = 0
    for dit in dits:
        counts = [g.count for g in dit.block_groups]
        if resident_setting is None:
            weights += dit.total_bytes
            continue
        weights += dit.non_block_bytes
        res = resident_per_group(counts, resident_setting)
        pf = prefetch_per_group(counts, prefetch_setting)
        streams = []
        for g, r, p in zip(dit.block_groups, res, pf):
            s = streamed_layers(g.count, r, policy)
            streamed = set(s)  # once per list: rebuilt per block it made this quadratic
            weights += sum(g.block_bytes[j] for j in range(g.count) if j not in streamed)
            streams.append(([g.block_bytes[j] for j in s], p, policy))
        # one expert (DiT) at a time: the experts' buffers do not add up
        buffers = max(buffers, busiest_buffer_bytes(streams))
    return weights, buffers
