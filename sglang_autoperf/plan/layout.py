"""Multi-GPU layout: CFG-parallel, Ulysses, ring, K/V-gather and FSDP inference, chosen by a per-step
cost model (compute split per GPU plus communication over the link) within the VRAM budget.

Pure functions of plain data (floor 2). Field names are sglang 0.5.23 ServerArgs fields; the rules
they must satisfy were read from ServerArgs._adjust_parallelism / _validate_parallelism /
_validate_cfg_parallel and layers/usp.py (tests/test_layout_contract.py checks them against sglang's
own validation on real ServerArgs). A layout needs a process restart, so it is predicted here and
verified by a measured table (benchmarks/layout_bench.sh); a measured winner beats the prediction.

Communication volumes are bytes *sent by one GPU*, per layer and forward pass, for a sequence of S
tokens of width H at b bytes an element (the derivations are written out in tests/test_layout.py):
  Ulysses u     4 x (S/u) x H x b x (u-1)/u   all-to-all of Q, K, V before attention, output after
  ring r        2 x (S/r) x H x b x (r-1)     K and V shards passed r-1 times round the ring
  K/V-gather k  2 x (S/k) x H x b x (k-1)     all-gather of K and V; queries and output stay local
  CFG-parallel  one gather per step of the noise prediction (latent-sized)
  FSDP          an all-gather of the DiT's weights every forward pass: W x (n-1)/n received
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from sglang_autoperf.plan import cost
from sglang_autoperf.probe.gpu import GpuProfile
from sglang_autoperf.sglang_adapter.contract import RING_ATTENTION_BACKENDS
from sglang_autoperf.units import gib

# NVLink bandwidth per link and direction by generation (NVIDIA datasheets: A100 NVLink3 12 links
# 600 GB/s, H100/H200 NVLink4 18 links 900 GB/s, B200 NVLink5 18 links 1.8 TB/s, both directions).
NVLINK_LINK_BYTES_PER_S = {3: 25e9, 4: 25e9, 5: 50e9}
# The generation a compute capability ships with (NVML's link version is not in the snapshots).
NVLINK_GENERATION_BY_CC_MAJOR = {8: 3, 9: 4, 10: 5}
# Share of the NVLink rate NCCL collectives reach. Not measured in this repository: a prior (NCCL's
# published all-to-all bus bandwidth on 8x H100 NVSwitch is ~0.8 of 450 GB/s); layout_bench.sh
# measures the layouts it ranks.
NCCL_LINK_EFFICIENCY = 0.8
# Fixed cost of one NCCL collective launch and handshake (prior, not measured here).
COLLECTIVE_LATENCY_S = 20e-6
# Bytes per activation element: sglang runs the DiT in bf16/fp16 (fp32 models in fp32).
ACTIVATION_BYTES = {"float32": 4}
# Candidates within this share of the fastest are ties; ties go to sglang's own default layout
# (no change without a predicted gain), then to no FSDP, then to less traffic.
TIE_FRACTION = 0.01
# FSDP keeps this many unsharded blocks on the card while it gathers the next (current + prefetched).
FSDP_GATHERED_BLOCKS = 2
# Where startup may put a measured layout (a Layout.label) from the tuning cache, in `current`.
MEASURED_LAYOUT_KEY = "autoperf_measured_layout"

# The ServerArgs fields a layout sets (cfg_parallel_degree and sp_degree are derived by sglang).
LAYOUT_FIELDS = ("enable_cfg_parallel", "ulysses_degree", "ring_degree", "kv_gather_degree", "use_fsdp_inference")
# Fields that, when the user set them, pin part of the layout.
_PIN_FIELDS = LAYOUT_FIELDS + ("cfg_parallel_degree", "sp_degree")


@dataclass(frozen=True)
class Layout:
    cfg: int = 1  # CFG-parallel degree (1: off)
    ulysses: int = 1
    ring: int = 1
    kv_gather: int = 1
    fsdp: bool = False

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring * self.kv_gather

    @property
    def gpus(self) -> int:
        return self.cfg * self.sp

    @property
    def label(self) -> str:
        parts = [f"cfg{self.cfg}"] if self.cfg > 1 else []
        parts += [f"{name}{d}" for name, d in (("ulysses", self.ulysses), ("ring", self.ring),
                                                ("kvgather", self.kv_gather)) if d > 1]
        return "+".join(parts + (["fsdp"] if self.fsdp else [])) or "single"

    def settings(self) -> dict[str, Any]:
        """The ServerArgs values as sglang holds them (it mirrors kv_gather_degree into ulysses_degree)."""
        ulysses = self.kv_gather if self.kv_gather > 1 else self.ulysses
        return {"enable_cfg_parallel": self.cfg > 1, "ulysses_degree": ulysses, "ring_degree": self.ring,
                "kv_gather_degree": self.kv_gather, "use_fsdp_inference": self.fsdp}


@dataclass(frozen=True)
class Link:
    bytes_per_s: float  # what one GPU sends per second in a collective, efficiency included
    kind: str


@dataclass(frozen=True)
class LayoutCost:
    layout: Layout
    compute_s: float  # per step on one GPU
    comm_bytes: int  # sent by one GPU per step
    exposed_comm_s: float  # communication the compute waits for, per step
    vram_bytes: int  # per GPU, DiT resident (FSDP-sharded where the layout says)
    memory: dict = field(default_factory=dict)

    @property
    def step_s(self) -> float:
        return self.compute_s + self.exposed_comm_s


@dataclass
class LayoutChoice:
    layout: Layout
    passes_per_gpu: int
    costs: list[LayoutCost]
    reason: str
    notes: list[str] = field(default_factory=list)
    fsdp_shards: int = 1  # the DiT's weights are split this many ways on each GPU


# --- the link -----------------------------------------------------------------------------------

def link_between(devices: Iterable) -> Link:
    """The slowest pair's link among these GPUs: NVLink (direct or NVSwitch, per NVML's active links)
    where every pair has it, else PCIe peer copies at the measured host-to-device rate."""
    devs = list(devices)
    if len(devs) < 2:
        return Link(0.0, "none")
    profile = GpuProfile(devices=tuple(devs), driver_version=None, host=None, source="plan")
    pairs = [(a.index, b.index) for i, a in enumerate(devs) for b in devs[i + 1:]]
    if all(profile.nvlink_connected(a, b) for a, b in pairs):
        gen = NVLINK_GENERATION_BY_CC_MAJOR.get((devs[0].compute_capability or (0, 0))[0])
        links = min(sum(1 for p in d.nvlink if p.active) for d in devs)
        if gen is not None and links:
            rate = links * NVLINK_LINK_BYTES_PER_S[gen] * NCCL_LINK_EFFICIENCY
            return Link(rate, f"NVLink{gen} x{links} (~{rate / 1e9:.0f} GB/s)")
    # No NVLink: peer traffic crosses PCIe; the H2D rate (docs/measured.md §1: 51-55 GB/s on Gen5
    # x16) is the prior for it.
    rate = min((d.h2d_bytes_per_s or 25e9) for d in devs)
    return Link(rate, f"PCIe (~{rate / 1e9:.0f} GB/s)")


# --- communication volumes ----------------------------------------------------------------------

def ulysses_bytes(seq: int, hidden: int, elem: int, u: int) -> float:
    return 4 * (seq / u) * hidden * elem * (u - 1) / u


def ring_bytes(seq: int, hidden: int, elem: int, r: int) -> float:
    return 2 * (seq / r) * hidden * elem * (r - 1)


def kv_gather_bytes(seq: int, hidden: int, elem: int, k: int) -> float:
    return 2 * (seq / k) * hidden * elem * (k - 1)


def sp_bytes_per_layer(seq: int, hidden: int, elem: int, lay: Layout) -> float:
    """One GPU's sequence-parallel traffic for one attention of one pass. Hybrid Ulysses x ring
    (sglang's USP): Ulysses inside groups of u over the S/r tokens of a ring member, then the ring
    passes K/V of H/u heads."""
    return (ulysses_bytes(seq // lay.ring, hidden, elem, lay.ulysses)
            + ring_bytes(seq, hidden // lay.ulysses, elem, lay.ring)
            + kv_gather_bytes(seq, hidden, elem, lay.kv_gather))


def collectives_per_layer(lay: Layout) -> int:
    """NCCL calls per attention: Ulysses packs Q/K/V into one all-to-all and sends the output back
    in another; the ring makes r-1 exchanges; K/V-gather one all-gather."""
    return 2 * (lay.ulysses > 1) + (lay.ring - 1) + (lay.kv_gather > 1)


def cfg_gather_bytes(latent_elements: int, elem: int, degree: int) -> float:
    """Each CFG rank sends its noise prediction to the other ranks once per step."""
    return latent_elements * elem * (degree - 1)


def fsdp_gather_bytes(weight_bytes: int, shards: int) -> float:
    """One forward pass gathers every block: each GPU receives the (n-1)/n it does not hold."""
    return weight_bytes * (shards - 1) / shards


# --- which layouts exist, and which sglang accepts ---------------------------------------------

def enumerate_layouts(num_gpus: int) -> list[Layout]:
    """Every layout whose degrees multiply to num_gpus: CFG-parallel 1 or 2 (two CFG branches),
    the rest split as Ulysses x ring or as K/V-gather alone, each with and without FSDP."""
    out: list[Layout] = []
    for cfg in (1, 2):
        if num_gpus % cfg:
            continue
        sp = num_gpus // cfg
        splits = [(u, sp // u, 1) for u in range(1, sp + 1) if sp % u == 0]
        if sp > 1:
            splits.append((1, 1, sp))
        for u, r, k in splits:
            for fsdp in (False, True):
                if fsdp and num_gpus < 2:
                    continue
                out.append(Layout(cfg, u, r, k, fsdp))
    return out


def layout_problem(lay: Layout, num_gpus: int, num_heads: int, runs_cfg: bool,
                   attention_backend: str | None = None) -> str | None:
    """Why sglang would refuse this layout or it would do no good (None: valid)."""
    if min(lay.cfg, lay.ulysses, lay.ring, lay.kv_gather) < 1:
        return "every degree must be at least 1"
    if lay.gpus != num_gpus:
        # _validate_parallelism: sp_degree = ring x ulysses, and num_gpus / cfg is what is left for it
        return f"degrees multiply to {lay.gpus}, not the {num_gpus} GPUs"
    if lay.kv_gather > 1 and (lay.ulysses > 1 or lay.ring > 1):
        return "K/V-gather does not compose with Ulysses or ring (sglang _adjust_parallelism)"
    if lay.cfg > 1 and not runs_cfg:
        # the CFG rank would recompute the one branch (and sglang refuses it for guidance-distilled
        # pipelines: _validate_cfg_parallel)
        return "CFG-parallel needs a request that runs classifier-free guidance"
    if lay.ulysses > 1 and num_heads % lay.ulysses:
        return f"{num_heads} attention heads do not split over Ulysses degree {lay.ulysses} (layers/usp.py)"
    if lay.ring > 1 and attention_backend not in RING_ATTENTION_BACKENDS:
        # sglang picks a ring-capable backend in ServerArgs.__post_init__, before a plan could set ring
        return (f"ring attention runs on {'/'.join(RING_ATTENTION_BACKENDS)} only; the attention backend is "
                f"{attention_backend or 'left to sglang'}")
    if lay.fsdp and num_gpus < 2:
        return "FSDP inference needs 2 or more GPUs"
    return None


def layout_from_settings(settings: Mapping[str, Any], num_gpus: int, runs_cfg: bool) -> Layout:
    """The layout these ServerArgs values run; missing values as sglang 0.5.23 fills them in
    (_adjust_parallelism: CFG-parallel for CFG models on an even count, K/V-gather at SP 2, Ulysses
    above, kv_gather_degree mirrored into ulysses_degree)."""
    enabled = settings.get("enable_cfg_parallel")
    cfg_degree = settings.get("cfg_parallel_degree")
    if cfg_degree:
        cfg = int(cfg_degree)
    elif enabled is None:
        cfg = 2 if runs_cfg and num_gpus >= 2 and num_gpus % 2 == 0 else 1
    else:
        cfg = 2 if _truthy(enabled) else 1
    sp = max(1, num_gpus // cfg)
    kv = int(settings.get("kv_gather_degree") or 0)
    u, r = int(settings.get("ulysses_degree") or 0), int(settings.get("ring_degree") or 0)
    if kv > 1:
        u, r = 1, 1
    elif not u and not r:
        kv, u, r = (2, 1, 1) if sp == 2 else (1, sp, 1)
    fsdp = _truthy(settings.get("use_fsdp_inference"))
    return Layout(cfg, u or max(1, sp // max(1, r)), r or 1, max(1, kv), fsdp)


def matches_pins(lay: Layout, pinned: Mapping[str, Any]) -> bool:
    """Whether the layout keeps every layout flag the user set at the user's value."""
    want = {**lay.settings(), "cfg_parallel_degree": lay.cfg, "sp_degree": lay.sp}
    for name in _PIN_FIELDS:
        if name not in pinned or pinned[name] is None:
            continue
        value, mine = pinned[name], want[name]
        if isinstance(mine, bool):
            if _truthy(value) != mine:
                return False
        elif int(value) != mine:
            return False
    return True


def _truthy(v) -> bool:
    return bool(v) and v not in ("false", "False", "0")


# --- cost of one layout --------------------------------------------------------------------------

def layout_cost(lay: Layout, model, workload, link: Link, flops: float, h2d: float,
                runs_cfg: bool) -> LayoutCost:
    """Compute per GPU per step plus the communication it waits for, and the per-GPU memory with the
    DiT resident (FSDP-sharded where the layout says)."""
    dit, family = model.dit, model.family
    elem = ACTIVATION_BYTES.get(dit.dtype, 2)
    passes = passes_per_gpu(lay, workload, runs_cfg)
    layers = cost.layer_costs(dit, family, workload.tokens_per_pass, workload.text_tokens, flops, h2d,
                              seq_parallel=lay.sp)
    compute = sum(lc.compute_s for lc in layers) * passes
    seq = attention_tokens(family, workload)
    per_layer = sp_bytes_per_layer(seq, dit.hidden_size, elem, lay)
    rate = link.bytes_per_s or 1.0
    sp_bytes = per_layer * len(layers) * passes
    exposed = 0.0
    if lay.sp > 1:
        # Every exchange counts as blocking: Ulysses and K/V-gather sit on the critical path, and the
        # ring's overlap with attention is not measured yet (its chunked attention and merges cost
        # compute the model does not price), so none of it is assumed hidden.
        exposed += (per_layer / rate + collectives_per_layer(lay) * COLLECTIVE_LATENCY_S) * len(layers) * passes
    latent = workload.tokens_per_pass * math.prod(dit.patch_size) * model.latent_channels * max(1, workload.batch_size)
    cfg_bytes = cfg_gather_bytes(latent, elem, lay.cfg) if lay.cfg > 1 else 0.0
    exposed += cfg_bytes / rate + (COLLECTIVE_LATENCY_S if lay.cfg > 1 else 0.0)
    weights = sum(d.total_bytes for d in dits_of(model))
    fsdp_bytes = fsdp_gather_bytes(dit.total_bytes, lay.gpus) * passes if lay.fsdp else 0.0
    # FSDP gathers the next block while this one computes: only a gather longer than the compute shows.
    exposed += max(0.0, fsdp_bytes / rate - compute)
    mem = layout_memory(lay, model, workload, weights)
    return LayoutCost(lay, compute, int(sp_bytes + cfg_bytes + fsdp_bytes), exposed, mem.total, mem.to_dict())


def layout_memory(lay: Layout, model, workload, weights: int) -> cost.MemoryBreakdown:
    dit = model.dit
    acts = cost.activation_bytes(model.family, workload.tokens_per_pass, workload.text_tokens, dit.hidden_size,
                                 batch=workload.batch_size, seq_parallel=lay.sp)
    gathered = 0
    if lay.fsdp:
        weights = -(-weights // lay.gpus)
        gathered = FSDP_GATHERED_BLOCKS * max(dit.layer_bytes or (0,))
    return cost.memory_breakdown(dit_weights=weights, prefetch_buffers=gathered, activations=acts, components=0)


def passes_per_gpu(lay: Layout, workload, runs_cfg: bool) -> int:
    passes = max(1, workload.cfg_passes) * max(1, workload.batch_size)
    if runs_cfg and workload.cfg_passes < 2:
        passes *= 2  # the workload was computed with CFG already split; count both branches here
    return max(1, passes // lay.cfg)


def attention_tokens(family: str, workload) -> int:
    """The sequence attention runs over: joint text+image for MMDiT families, image/video tokens
    for the others (their cross-attention reads the text K/V each rank holds whole)."""
    extra = workload.text_tokens if family in cost.MMDIT_FAMILIES else 0
    return workload.tokens_per_pass + extra


def dits_of(model) -> list:
    return [model.dits[k] for k in sorted(model.dits)] if model.dits else [model.dit]


# --- the choice ----------------------------------------------------------------------------------

def choose_layout(model, workload, devices, num_gpus: int, pinned: Mapping[str, Any],
                  current: Mapping[str, Any], budget: int, flops: float, h2d: float,
                  runs_cfg: bool) -> LayoutChoice:
    """The fastest valid layout (pinned flags kept) whose per-GPU memory fits the budget with the DiT
    resident; when none fits, the fastest without FSDP (the DiT search then streams layers: sglang
    runs FSDP instead of DiT offload, never both). A measured layout in `current` wins."""
    link = link_between(devices)
    default = layout_from_settings(current, num_gpus, runs_cfg)
    heads = model.dit.num_heads
    backend = pinned.get("attention_backend", current.get("attention_backend"))
    valid = [lay for lay in enumerate_layouts(num_gpus)
             if layout_problem(lay, num_gpus, heads, runs_cfg, backend) is None and matches_pins(lay, pinned)]
    if not valid:
        return LayoutChoice(default, passes_per_gpu(default, workload, runs_cfg), [],
                            f"no valid layout keeps the pinned flags; left to sglang ({default.label})",
                            [f"layout: the pinned parallel flags admit no layout of {num_gpus} GPUs the cost "
                             "model knows; sglang's own validation decides"])
    costs = [layout_cost(lay, model, workload, link, flops, h2d, runs_cfg) for lay in valid]
    fits = [c for c in costs if c.vram_bytes <= budget]
    pool = fits or _streamable([c for c in costs if not c.layout.fsdp] or costs, budget)
    best = _fastest(pool, default)
    reason = _reason(best, costs, default, link, budget, fitted=bool(fits))
    choice = LayoutChoice(best.layout, passes_per_gpu(best.layout, workload, runs_cfg), costs, reason,
                          fsdp_shards=best.layout.gpus if best.layout.fsdp else 1)
    measured = current.get(MEASURED_LAYOUT_KEY)
    return prefer_measured(choice, measured, [c.layout for c in pool], workload, runs_cfg)


def _streamable(costs: list[LayoutCost], budget: int) -> list[LayoutCost]:
    """Where no layout holds the DiT resident: those whose activations and reserve leave room to
    stream the DiT, else the one that needs the least besides the weights."""
    room = [c for c in costs if c.vram_bytes - c.memory["dit_weights"] < budget]
    return room or [min(costs, key=lambda c: c.vram_bytes - c.memory["dit_weights"])]


def _fastest(pool: list[LayoutCost], default: Layout) -> LayoutCost:
    fastest = min(c.step_s for c in pool)
    ties = [c for c in pool if c.step_s <= fastest * (1 + TIE_FRACTION)]
    return min(ties, key=lambda c: (c.layout != default, c.layout.fsdp, c.comm_bytes, c.step_s))


def _reason(best: LayoutCost, costs: list[LayoutCost], default: Layout, link: Link, budget: int,
            fitted: bool) -> str:
    ms = 1e3
    others = sorted((c for c in costs if c.layout != best.layout), key=lambda c: c.step_s)[:3]
    vs = ", ".join(f"{c.layout.label} {c.step_s * ms:.1f} ms" for c in others)
    where = (f"{gib(best.vram_bytes, unit=False)} of {gib(budget)} per GPU" if fitted else
             f"no layout holds the DiT resident in {gib(budget)} per GPU; the DiT search streams it")
    was = "" if best.layout == default else f"; sglang's default {default.label}"
    return (f"layout {best.layout.label}: predicted step {best.step_s * ms:.1f} ms (compute "
            f"{best.compute_s * ms:.1f}, communication {best.exposed_comm_s * ms:.1f} ms exposed, "
            f"{best.comm_bytes / 1e9:.2f} GB sent per GPU over {link.kind}), {where}; vs {vs or 'nothing else'}{was}")


def prefer_measured(choice: LayoutChoice, measured: str | None, allowed: list[Layout], workload,
                    runs_cfg: bool) -> LayoutChoice:
    """A layout measured fastest on this model, card, count, link and shape (a Layout.label from the
    tuning cache) replaces the prediction when it is still allowed (valid, pinned flags kept, within
    the budget); otherwise the prediction stands and the note says why."""
    if not measured or measured == choice.layout.label:
        return choice
    hit = next((lay for lay in allowed if lay.label == measured), None)
    if hit is None:
        choice.notes.append(f"layout: the measured best {measured!r} is not allowed here (pins, GPU count or "
                            f"budget); kept the predicted {choice.layout.label}")
        return choice
    predicted = next((c for c in choice.costs if c.layout == hit), None)
    step = f" (predicted {predicted.step_s * 1e3:.0f} ms)" if predicted else ""
    return dataclasses.replace(
        choice, layout=hit, passes_per_gpu=passes_per_gpu(hit, workload, runs_cfg),
        fsdp_shards=hit.gpus if hit.fsdp else 1,
        reason=f"layout {hit.label}: measured fastest by a layout benchmark{step}; the model predicted "
               f"{choice.layout.label}")


def per_gpu_model(model, shards: int):
    """The model as one GPU holds it under FSDP: every DiT's weight bytes split `shards` ways
    (parameter counts, hence compute, unchanged)."""
    if shards <= 1:
        return model

    def split(d):
        groups = tuple(dataclasses.replace(g, block_bytes=tuple(-(-b // shards) for b in g.block_bytes))
                       for g in d.block_groups)
        return dataclasses.replace(d, block_groups=groups,
                                   layer_bytes=tuple(-(-b // shards) for b in d.layer_bytes),
                                   non_block_bytes=-(-d.non_block_bytes // shards),
                                   total_bytes=-(-d.total_bytes // shards))

    dits = {k: split(d) for k, d in model.dits.items()}
    dit = dits.get(model.dit.component) or split(model.dit)
    return dataclasses.replace(model, dit=dit, dits=dits)
