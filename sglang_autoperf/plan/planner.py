"""Planner: profiles + user-pinned flags + budget -> Plan (changes with reasons, predicted cost).

Pure: no torch, no sglang, no NVML. Setting names are sglang 0.5.23 ServerArgs fields. Semantics
read from sglang's source (runtime/server_args, managers/memory_managers/layerwise_offload.py):
  dit_offload_prefetch_size      <1: fraction of each layer list (0.0 = 1 layer); >=1: layer count
  dit_layerwise_resident_layers  0: none; <1: fraction; >=1: count, applied to *each* ModuleList
  dit_layerwise_residency_policy "leading" | "strided"
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sglang_autoperf.plan import cost
from sglang_autoperf.plan import layout as layout_model
from sglang_autoperf.plan.objective import placement_objective
from sglang_autoperf.sglang_adapter.contract import prefetch_per_group, resident_per_group
from sglang_autoperf.units import gib

# torch.compile: families with measured eager->compiled wins at served shapes (SGLang Diffusion
# performance guide; Qwen-Image 502 -> 190 ms/step #13641). Z-Image-Turbo lost (0.79 s eager vs
# 0.99 s compiled, #30016), so it is not here.
COMPILE_GAIN_FAMILIES = frozenset({"flux", "qwen_image", "wan"})
# DiT forwards one process must run before compile time is repaid (compile is per process and
# per shape; serving repeats shapes, one-shot generate of a few steps does not).
MIN_COMPILE_FORWARDS = 16
# What compile must repay in one process: sglang compiles the DiT with Inductor's
# max-autotune-no-cudagraphs, which autotunes every GEMM shape: the first compiled 17-frame
# Wan-1.3B request had not finished after 290 s on an H200 (GPU sandbox, 2026-11-27, killed; eager:
# ~1.3 s of denoising), and a warmup with compile ran past 240 s the session before. And the
# conservative share of a step it saves (#13641 measured 62%; #21417 saw 1.47-1.68x losses in
# one mode, so less is assumed).
COMPILE_COST_S = 300.0
COMPILE_SAVING_FRACTION = 0.2
# Sequence parallel below this many tokens per GPU spends more on all-to-all than it saves.
MIN_TOKENS_PER_GPU_FOR_SP = 2048
PREFETCH_CHOICES = (1, 2, 3, 4, 6, 8)
# Resident counts searched per (prefetch, policy): every count while a layer list is at most this
# long (the longest published one, Qwen-Image's, has 60 blocks), an even grid of this many beyond.
# Each candidate simulates every block, so searching every count made planning quadratic in the
# number of blocks (1000 blocks: 166 s); a bounded candidate set keeps it linear.
MAX_RESIDENT_CANDIDATES = 64
# Copies count as hidden when the compute stream waits less than this share of the step.
HIDDEN_FRACTION = 0.02
# Candidates within this share of the fastest are ties; ties go to more resident layers
# (less PCIe traffic beside compute: GEMMs lost 0-10% with copies in flight, docs/measured.md §1).
TIE_FRACTION = 0.01
# Candidates are ranked with compute this much faster than predicted: the cost model's
# calibration band is about +-30%, and torch.compile shortens compute further, so copies that
# hide only behind the nominal compute are not counted as hidden.
ROBUST_COMPUTE_SCALE = 0.7
# Attention-backend autotune is validated by sglang only on these architectures.
AUTOTUNE_MAJORS = (9, 12)

COMPONENT_FLAGS = {  # component name prefix -> sglang flag
    "text_encoder": "text_encoder_cpu_offload",
    "image_encoder": "image_encoder_cpu_offload",
    "vae": "vae_cpu_offload",
}


@dataclass
class Change:
    setting: str
    before: Any
    after: Any
    reason: str


@dataclass
class DitDecision:
    offload: bool = False
    resident_layers: int = 0  # the setting's value: a count applied to each layer list
    prefetch_layers: int = 1
    policy: str = "leading"
    resident_per_group: list[int] = field(default_factory=list)
    total_layers: int = 0
    # issue 18: the step the simulation predicts with the streamed layers in the codec's bytes, and
    # whether that is worth measuring live (the worker then holds both stores until it has)
    compressed_step_ms: float = 0.0
    compress: bool = False


@dataclass
class Predicted:
    step_ms: float = 0.0
    compute_ms: float = 0.0
    copy_ms: float = 0.0
    exposed_copy_ms: float = 0.0
    vram_bytes: int = 0
    resident_step_ms: float = 0.0  # the same step with the DiT fully resident
    request_overhead_ms: float = 0.0  # per request: component and resident-set transfers
    budget_bytes: int = 0
    per_gpu: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    dit: DitDecision = field(default_factory=DitDecision)
    components: dict[str, str] = field(default_factory=dict)
    predicted: Predicted = field(default_factory=Predicted)
    notes: list[str] = field(default_factory=list)
    objective: str = "speed"
    settings: dict[str, Any] = field(default_factory=dict)  # every value the plan wants

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(
            changes=[Change(**c) for c in d.get("changes", [])],
            dit=DitDecision(**d.get("dit", {})),
            components=dict(d.get("components", {})),
            predicted=Predicted(**d.get("predicted", {})),
            notes=list(d.get("notes", [])),
            objective=d.get("objective", "speed"),
            settings=dict(d.get("settings", {})),
        )


def plan_to_json_dict(plan: Plan) -> dict:
    return plan.to_dict()


# --- internal candidate ---------------------------------------------------------------------

@dataclass
class _Cand:
    offload: bool
    resident: int
    prefetch: int
    policy: str
    sim: cost.StepSim
    dit_bytes: int
    buffer_bytes: int
    resident_per_group: tuple[int, ...]
    offloaded: tuple[str, ...] = ()  # components moved to the CPU
    vram: int = 0
    request_s: float = 0.0  # ranking key: steps x robust step + per-request transfers
    memory: dict = field(default_factory=dict)
    robust: cost.StepSim | None = None  # the step with compute x ROBUST_COMPUTE_SCALE


def _component_flag(name: str) -> str | None:
    for prefix, flag in COMPONENT_FLAGS.items():
        if name.startswith(prefix):
            return flag
    return None


def _as_bool(v) -> bool:
    return bool(v) and v not in ("false", "False", "0")


@dataclass
class _Stage:
    """What the planning stages share: the inputs, the card planned for, and the settings wanted so
    far with their reasons (each stage adds its own)."""

    plan: Plan
    model: Any
    workload: Any
    pinned: dict[str, Any]
    current: dict[str, Any]
    objective: str
    mode_objective: str  # the user's own mode: what the plan would do without pinned flags
    num_gpus: int
    used: list  # the GPUs this run uses (of those the profile shows)
    dev: Any  # the one with the least free memory: every rank must fit
    flops: float
    h2d: float
    budget: int
    want: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Layout:
    passes: int  # DiT forward passes per step on one GPU
    sp: int  # sequence-parallel degree
    tokens_per_gpu: int


@dataclass(frozen=True)
class _Components:
    """Encoders and VAE grouped by the flag that places them (FLUX's CLIP and T5 share one flag)."""

    bytes_of: dict[str, int]  # component -> bytes
    flag_of: dict[str, str]  # component -> flag
    flag_bytes: dict[str, int]
    flag_names: dict[str, list[str]]
    forced_cpu: tuple[str, ...]  # flags the user pinned on
    offload_sets: list[tuple[str, ...]]  # which flags go to the CPU, per candidate


def make_plan(
    gpu,
    model,
    workload,
    pinned: dict[str, Any],
    current: dict[str, Any],
    budget_bytes: int | None,
    lossy: bool = False,
    performance_mode: str = "auto",
    num_gpus: int = 1,
    platform: str = "cuda",
    available_attention_backends: list[str] | None = None,
    expected_requests: int | None = None,
    allow_compile: bool = False,
) -> Plan:
    """The settings for this model, card, workload and budget, in stages: layout, components, the
    DiT search, the DiT's settings, compile, attention, then the changes against sglang's values."""
    st = _stage(gpu, model, workload, pinned, current, budget_bytes, performance_mode, num_gpus, platform)
    if isinstance(st, Plan):
        return st
    layout = _layout(st, st.num_gpus)
    comps = _components(st)
    best, free_best, layers, res_sim, acts = _dit_search(st, layout, comps)
    _record_dit(st, layout, comps, best, layers, res_sim)
    _dit_settings(st, comps, best, layers, res_sim, acts)
    _compile_setting(st, layout, best, expected_requests, allow_compile)
    _attention_settings(st, lossy, available_attention_backends)
    return _changes(st, best, free_best)


def _stage(gpu, model, workload, pinned, current, budget_bytes, performance_mode, num_gpus, platform):
    """The shared inputs, or a Plan with no changes where there is nothing to plan."""
    pinned = dict(pinned or {})
    current = dict(current or {})
    objective = placement_objective(performance_mode, pinned.get("dit_layerwise_offload"))
    plan = Plan(objective=objective)
    if platform != "cuda":
        plan.notes.append(f"platform {platform}: sglang never streams layers there; no changes planned")
        return plan
    devices = list(getattr(gpu, "devices", ()) or ())
    if not devices or model.dit is None:
        plan.notes.append("no GPU or no DiT profiled; no changes planned")
        return plan
    num_gpus = max(1, int(num_gpus or current.get("num_gpus") or 1))
    used = devices[:num_gpus]
    dev = min(used, key=lambda d: d.memory_free_bytes)
    budget = int(budget_bytes) if budget_bytes else int(dev.memory_free_bytes)
    return _Stage(plan, model, workload, pinned, current, objective, placement_objective(performance_mode),
                  num_gpus, used, dev, dev.bf16_dense_flops or 989e12, dev.h2d_bytes_per_s or 25e9,
                  min(budget, int(dev.memory_free_bytes)))


def _layout(st: _Stage, num_gpus: int) -> _Layout:
    """The multi-GPU layout (plan/layout.py on 2+ GPUs); what that leaves per GPU."""
    pinned, current, workload, model = st.pinned, st.current, st.workload, st.model
    cfg_parallel = _as_bool(pinned["enable_cfg_parallel"]) if "enable_cfg_parallel" in pinned else False
    runs_cfg = workload.cfg_passes >= 2 or (_as_bool(current.get("enable_cfg_parallel")) and model.cfg_default)
    passes = 1 if (cfg_parallel and runs_cfg) else workload.cfg_passes
    sp = max(1, int(pinned.get("ulysses_degree") or 1) * int(pinned.get("ring_degree") or 1))
    # --- issue 20: on 2+ GPUs the layout (CFG-parallel / Ulysses / ring / K/V-gather / FSDP) is the
    # cost model's choice (plan/layout.py); under FSDP the later stages see the DiT as one GPU holds it.
    if num_gpus >= 2:
        choice = layout_model.choose_layout(model, workload, st.used, num_gpus, pinned, current, st.budget,
                                            st.flops, st.h2d, runs_cfg)
        if choice.costs:  # empty: the pinned flags admit no layout the model knows; left to sglang
            for name, value in choice.layout.settings().items():
                st.want[name], st.reasons[name] = value, choice.reason
            st.model = layout_model.per_gpu_model(model, choice.fsdp_shards)
        st.plan.notes.extend(choice.notes)
        passes, sp = choice.passes_per_gpu, choice.layout.sp
    # --- end issue 20
    tokens_per_gpu = workload.tokens_per_pass // sp
    if sp > 1 and tokens_per_gpu < MIN_TOKENS_PER_GPU_FOR_SP:
        st.plan.notes.append(
            f"sequence parallel {sp} leaves {tokens_per_gpu} tokens per GPU, below {MIN_TOKENS_PER_GPU_FOR_SP}: "
            "all-to-all likely costs more than it saves; consider fewer GPUs")
    return _Layout(passes, sp, tokens_per_gpu)


def _components(st: _Stage) -> _Components:
    model, pinned = st.model, st.pinned
    bytes_of = {n: c.bytes for n, c in model.components.items()
                if n not in model.dits and _component_flag(n) is not None}
    flag_of = {n: _component_flag(n) for n in bytes_of}
    flag_bytes: dict[str, int] = {}
    flag_names: dict[str, list[str]] = {}
    for n, flag in flag_of.items():
        flag_bytes[flag] = flag_bytes.get(flag, 0) + bytes_of[n]
        flag_names.setdefault(flag, []).append(n)
    # offload order: largest encoders first, VAE last (its decode follows the DiT every request)
    free_flags = sorted((f for f in flag_bytes if f not in pinned),
                        key=lambda f: (f == "vae_cpu_offload", -flag_bytes[f]))
    forced_cpu = tuple(f for f in flag_bytes if f in pinned and _as_bool(pinned[f]))
    sets = [forced_cpu + tuple(free_flags[:k]) for k in range(len(free_flags) + 1)]
    if st.objective == "memory":  # encoders run once per request: off the card first
        sets = [s for s in sets if all(f in s for f in free_flags if f != "vae_cpu_offload")]
    return _Components(bytes_of, flag_of, flag_bytes, flag_names, forced_cpu, sets)


def _dit_search(st: _Stage, layout: _Layout, comps: _Components):
    """The best DiT placement x component set within the budget (pinned DiT flags honoured), and
    the best without those pins (what pinning costs, for the notes)."""
    model, workload, pinned = st.model, st.workload, st.pinned
    dits = [model.dits[k] for k in sorted(model.dits)] if model.dits else [model.dit]
    dit = model.dit
    layers = cost.layer_costs(dit, model.family, workload.tokens_per_pass, workload.text_tokens,
                              st.flops, st.h2d, seq_parallel=layout.sp)
    acts = cost.activation_bytes(model.family, workload.tokens_per_pass, workload.text_tokens,
                                 dit.hidden_size, batch=workload.batch_size, seq_parallel=layout.sp)
    passes_eff = layout.passes * max(1, workload.batch_size)  # batch>1 modelled as more passes
    res_sim = cost.resident_step(layers, passes_eff)  # nominal, for reporting
    dit_pins = [pinned.get(k) for k in ("dit_layerwise_offload", "dit_layerwise_resident_layers",
                                        "dit_offload_prefetch_size", "dit_layerwise_residency_policy")]
    table = _SimTable(dits, layers, [g.count for g in dit.block_groups], passes_eff)
    cands = _dit_candidates(table, *dit_pins)
    free_cands = _dit_candidates(table, None, None, None, None) if any(v is not None for v in dit_pins) else cands
    steps = max(1, workload.steps)

    def expand(cs):
        out = []
        for c in cs:
            for offl in comps.offload_sets:
                on_gpu = sum(b for f, b in comps.flag_bytes.items() if f not in offl)
                mem = cost.memory_breakdown(dit_weights=c.dit_bytes, prefetch_buffers=c.buffer_bytes,
                                            activations=acts, components=on_gpu)
                # per request: offloaded components come in once; the resident set loads once
                moved = sum(comps.flag_bytes[f] for f in offl)
                res_load = (c.dit_bytes - sum(d.non_block_bytes for d in dits)) if c.offload else 0
                req = steps * c.robust.step_s + (moved + res_load) / st.h2d
                out.append(_Cand(c.offload, c.resident, c.prefetch, c.policy, c.sim, c.dit_bytes,
                                 c.buffer_bytes, c.resident_per_group, offl, mem.total, req, mem.to_dict(),
                                 c.robust))
        return out

    all_c = expand(cands)
    best = _choose(all_c, st.budget, st.objective)
    free_best = _choose(expand(free_cands), st.budget, st.mode_objective)
    if best is None:  # nothing fits: least memory, and say so
        best = min(all_c, key=lambda c: c.vram)
        st.plan.notes.append(
            f"nothing fits the {gib(st.budget)} budget; least-memory plan needs {gib(best.vram)}")
    return best, free_best, layers, res_sim, acts


def _record_dit(st: _Stage, layout: _Layout, comps: _Components, best: "_Cand", layers, res_sim) -> None:
    plan, model = st.plan, st.model
    plan.dit = DitDecision(offload=best.offload, resident_layers=best.resident if best.offload else 0,
                           prefetch_layers=best.prefetch if best.offload else 0, policy=best.policy,
                           resident_per_group=list(best.resident_per_group), total_layers=len(layers))
    if best.offload:
        _record_compression(st, best, layers, layout.passes * max(1, st.workload.batch_size))
    plan.components = {n: ("cpu" if comps.flag_of[n] in best.offloaded else "gpu") for n in comps.bytes_of}
    for n in model.dits or {model.dit.component: model.dit}:
        plan.components[n] = "layerwise" if best.offload else "gpu"
    ms, steps = 1e3, max(1, st.workload.steps)
    plan.predicted = Predicted(
        step_ms=best.sim.step_s * ms, compute_ms=best.sim.compute_s * ms, copy_ms=best.sim.copy_s * ms,
        exposed_copy_ms=best.sim.exposed_s * ms, vram_bytes=best.vram, resident_step_ms=res_sim.step_s * ms,
        request_overhead_ms=(best.request_s - steps * best.robust.step_s) * ms, budget_bytes=st.budget,
        per_gpu=[{"index": d.index, "vram_bytes": best.vram, "tokens": layout.tokens_per_gpu,
                  "passes_per_step": layout.passes} for d in st.used],
        memory=best.memory,
    )


def _record_compression(st: _Stage, best: "_Cand", layers, passes: int) -> None:
    """Whether streaming the codec's bytes is predicted to shorten this placement's step."""
    groups = sorted({lc.group for lc in layers})
    counts = [sum(1 for lc in layers if lc.group == g) for g in groups]
    sim = cost.simulate_step(cost.compressed_layers(layers), best.resident_per_group,
                             prefetch_per_group(counts, float(best.prefetch)), best.policy, passes)
    ms = 1e3
    st.plan.dit.compressed_step_ms = sim.step_s * ms
    st.plan.dit.compress = sim.step_s < best.sim.step_s * (1 - cost.COMPRESS_MIN_GAIN)
    if st.plan.dit.compress:
        st.plan.notes.append(
            f"compressed streaming (lossless, {cost.CODEC_RATIO:.2f} of the bytes) predicted {sim.step_s * ms:.0f} ms "
            f"vs {best.sim.step_s * ms:.0f} ms a step: the worker measures both and keeps the faster")


def _dit_settings(st: _Stage, comps: _Components, best: "_Cand", layers, res_sim, acts) -> None:
    """The DiT's and the components' flags, each with its reason in numbers."""
    want, reasons, budget, ms = st.want, st.reasons, st.budget, 1e3
    model = st.model
    dits = [model.dits[k] for k in sorted(model.dits)] if model.dits else [model.dit]
    want["dit_layerwise_offload"] = best.offload
    want["dit_cpu_offload"] = False
    if best.offload:
        want.update(dit_layerwise_resident_layers=best.resident, dit_offload_prefetch_size=float(best.prefetch),
                    dit_layerwise_residency_policy=best.policy)
        hidden = "hidden" if best.sim.exposed_s <= HIDDEN_FRACTION * best.sim.step_s else \
            f"{best.sim.exposed_s * ms:.0f} ms exposed"
        reasons["dit_layerwise_offload"] = (
            f"streamed the DiT layer by layer: fully resident needs "
            f"{gib(_resident_vram(dits, acts, comps.flag_bytes, comps.forced_cpu))}, over the {gib(budget)} budget")
        reasons["dit_cpu_offload"] = (
            f"layerwise streaming replaces whole-DiT offload, which would move all "
            f"{gib(sum(d.total_bytes for d in dits))} of DiT weights every use")
        reasons["dit_layerwise_resident_layers"] = (
            f"kept {sum(best.resident_per_group)} of {len(layers)} DiT layers resident ({gib(best.vram, unit=False)} of "
            f"{gib(budget)} budget): predicted copy {best.sim.copy_s * ms:.0f} ms vs compute "
            f"{best.sim.compute_s * ms:.0f} ms per step {hidden}")
        reasons["dit_offload_prefetch_size"] = (
            f"prefetch {best.prefetch} layer(s): predicted step {best.sim.step_s * ms:.0f} ms "
            f"({best.sim.exposed_s * ms:.0f} ms copy exposed) vs {res_sim.step_s * ms:.0f} ms fully resident")
        reasons["dit_layerwise_residency_policy"] = (
            f"{best.policy} residency: predicted step {best.sim.step_s * ms:.0f} ms, the faster layout in the simulation")
    else:
        fits = (f"kept the whole DiT resident ({gib(best.vram, unit=False)} of {gib(budget)} budget)" if best.vram <= budget
                else f"nothing fits the {gib(budget)} budget; the least memory, {gib(best.vram)}, is the whole "
                     "DiT resident")
        reasons["dit_layerwise_offload"] = reasons["dit_cpu_offload"] = (
            f"{fits}: predicted step {res_sim.step_s * ms:.0f} ms with no copies")
    for flag, names in comps.flag_names.items():
        to_cpu = flag in best.offloaded
        label, size = "+".join(names), gib(comps.flag_bytes[flag], unit=False)
        want[flag] = to_cpu
        reasons[flag] = (
            f"moved {label} ({size} GiB) to the CPU: it runs once per request "
            f"({comps.flag_bytes[flag] / st.h2d * ms:.0f} ms to bring back) and its room goes to the DiT"
            if to_cpu else f"kept {label} ({size} GiB) on the GPU: the plan fits in {gib(best.vram, unit=False)} of {gib(budget)}")


def _compile_setting(st: _Stage, layout: _Layout, best: "_Cand", expected_requests, allow_compile: bool) -> None:
    model, ms = st.model, 1e3
    steps = max(1, st.workload.steps)
    forwards = steps * layout.passes * max(1, st.workload.batch_size)
    copy_bound = best.offload and best.sim.exposed_s > 0.1 * best.sim.step_s
    # Compiling a layerwise-streamed DiT recompiles around sglang's per-layer hooks and is not
    # measured yet (a 17-frame Wan-1.3B warmup with it ran past 240 s on an H200): resident only.
    # One-shot runs (`sglang generate`) must repay compile within their own requests.
    compile_saving_s = (COMPILE_SAVING_FRACTION * best.sim.step_s * steps * (expected_requests or 0))
    one_shot_unpaid = expected_requests is not None and compile_saving_s < COMPILE_COST_S
    compile_would_win = (model.family in COMPILE_GAIN_FAMILIES and forwards >= MIN_COMPILE_FORWARDS
                         and not copy_bound and not best.offload and not one_shot_unpaid)
    if compile_would_win and not allow_compile:
        # Opt-in only: minutes of autotuning stall the first request of every new shape, and
        # compiled kernels are not bit-identical to eager ones (placement changes are).
        if "enable_torch_compile" not in st.pinned:
            st.plan.notes.append(
                f"torch.compile left off: it may pay on {model.family} at {forwards} DiT forwards per request, but its "
                "first request autotunes for minutes (a 17-frame Wan-1.3B one was unfinished after 290 s on an H200); "
                "SGLANG_AUTOPERF_COMPILE=1 lets the plugin turn it on and keep it only if measured faster")
        return
    st.want["enable_torch_compile"] = compile_would_win
    if compile_would_win:
        st.reasons["enable_torch_compile"] = (
            f"torch.compile on: {model.family} has measured compile wins (perf guide; Qwen-Image 502 -> 190 ms/step #13641) "
            f"and {forwards} DiT forwards per request repay the compile")
        return
    why = (f"{model.family} has no measured compile win, and compile can lose (Z-Image-Turbo 0.79 -> 0.99 s, #30016)"
           if model.family not in COMPILE_GAIN_FAMILIES else
           f"only {forwards} DiT forwards per request" if forwards < MIN_COMPILE_FORWARDS else
           (f"{expected_requests} request(s) in this process save ~{compile_saving_s:.1f} s, less than "
            f"~{COMPILE_COST_S:.0f} s of compile") if one_shot_unpaid else
           f"the DiT is streamed layer by layer ({sum(best.resident_per_group)} of {model.dit.num_layers} layers resident; "
           "compile with offload hooks is not measured)" if best.offload else
           f"the step is copy-bound ({best.sim.exposed_s * ms:.0f} of {best.sim.step_s * ms:.0f} ms waiting on copies)")
    st.reasons["enable_torch_compile"] = f"torch.compile off: {why}"


def _attention_settings(st: _Stage, lossy: bool, available_attention_backends) -> None:
    cc = tuple(st.dev.compute_capability or (0, 0))
    avail = available_attention_backends
    if avail is None:
        avail = st.current.get("available_attention_backends")
    if lossy and avail and "sage_attn" in avail and cc[0] in (8, 9, 12):
        st.want["attention_backend"] = "sage_attn"
        st.reasons["attention_backend"] = "sage attention (lossy, opted in): ~2x faster attention kernels on sm80-sm120"
    else:
        backend = st.current.get("attention_backend")
        default = "fa" if (cc >= (8, 0) and (avail is None or "fa" in avail)) else "torch_sdpa"
        st.plan.notes.append(f"attention_backend left to sglang ({backend or 'default'}; it resolves to {default} "
                             f"on sm{cc[0]}{cc[1]})")
    if cc[0] in AUTOTUNE_MAJORS and "attention_backend" not in st.pinned:
        # Autotune may pick another backend per layer: never over a backend the user chose.
        st.want["enable_attention_backend_autotune"] = True
        st.reasons["enable_attention_backend_autotune"] = (
            f"per-layer attention autotune on: validated by sglang on sm90/sm12x, this card is sm{cc[0]}{cc[1]}")
    if lossy:
        st.plan.notes.append("lossy opt-in: cache-dit and fp8 weights are not planned yet (set them explicitly)")


def _changes(st: _Stage, best: "_Cand", free_best) -> Plan:
    """The wanted settings as changes against sglang's own values; pinned flags only as notes."""
    plan = st.plan
    plan.settings = dict(st.want)
    _pinned_notes(plan, st.pinned, st.want, best, free_best, 1e3)
    for setting, after in st.want.items():
        if setting in st.pinned or _same(st.current.get(setting), after):
            continue
        plan.changes.append(Change(setting, st.current.get(setting), after, st.reasons.get(setting, "")))
    if st.objective == "report":
        for c in plan.changes:
            plan.notes.append(f"performance_mode=manual: would set {c.setting}={c.after!r} ({c.reason})")
        plan.changes = []
    return plan


def _same(a, b) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return a is not None and bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b))
    return a == b


def _resident_vram(dits, acts, comp_bytes, forced_cpu) -> int:
    w = sum(d.total_bytes for d in dits)
    comps = sum(b for n, b in comp_bytes.items() if n not in forced_cpu)
    return cost.memory_breakdown(dit_weights=w, prefetch_buffers=0, activations=acts, components=comps).total


class _SimTable:
    """Simulations shared by the pinned and the unconstrained search, computed on demand."""

    def __init__(self, dits, layers, group_counts, passes):
        self.dits, self.layers, self.group_counts, self.passes = dits, layers, group_counts, passes
        self.fast = [dataclasses.replace(lc, compute_s=lc.compute_s * ROBUST_COMPUTE_SCALE) for lc in layers]
        self.res_sim = cost.resident_step(layers, passes)
        self.res_robust = cost.resident_step(self.fast, passes)
        self._memo: dict = {}

    def get(self, r: int, p: int, pol: str) -> _Cand:
        key = (r, p, pol)
        if key not in self._memo:
            res_pg = resident_per_group(self.group_counts, float(r))
            pf_pg = prefetch_per_group(self.group_counts, float(p))
            sim = cost.simulate_step(self.layers, res_pg, pf_pg, pol, self.passes)
            robust = cost.simulate_step(self.fast, res_pg, pf_pg, pol, self.passes)
            w, b = cost.dit_placed_bytes(self.dits, float(r), float(p), pol)
            self._memo[key] = _Cand(True, r, max(pf_pg), pol, sim, w, b, res_pg, robust=robust)
        return self._memo[key]


def _dit_candidates(table: _SimTable, pin_lw, pin_res, pin_pf, pin_pol) -> list[_Cand]:
    out: list[_Cand] = []
    if pin_lw is None or not _as_bool(pin_lw):
        w, _ = cost.dit_placed_bytes(table.dits, None, 0.0, "leading")
        out.append(_Cand(False, 0, 0, "leading", table.res_sim, w, 0, tuple(table.group_counts),
                         robust=table.res_robust))
    if pin_lw is not None and not _as_bool(pin_lw):
        return out
    residents = [float(pin_res)] if pin_res is not None else _resident_counts(max(table.group_counts))
    prefetches = [float(pin_pf)] if pin_pf is not None else PREFETCH_CHOICES
    policies = [pin_pol] if pin_pol is not None else ("leading", "strided")
    for r in residents:
        for p in prefetches:
            for pol in policies:
                if r == 0 and pol == "strided" and pin_pol is None:
                    continue  # identical run: nothing resident to place
                out.append(table.get(r, p, pol))
    return out


def _resident_counts(longest: int) -> list[int]:
    """Resident-layer settings to search: all of 0..longest-1, or an even grid with both ends."""
    if longest <= MAX_RESIDENT_CANDIDATES:
        return list(range(0, longest))
    step = longest / MAX_RESIDENT_CANDIDATES
    return sorted({int(i * step) for i in range(MAX_RESIDENT_CANDIDATES)} | {longest - 1})


def _choose(cands: list[_Cand], budget: int, objective: str) -> _Cand | None:
    fits = [c for c in cands if c.vram <= budget]
    if not fits:
        return None
    if objective == "memory":
        hidden = [c for c in fits if c.sim.exposed_s <= HIDDEN_FRACTION * c.sim.step_s]
        if hidden:
            return min(hidden, key=lambda c: (c.vram, c.request_s))
    fastest = min(c.request_s for c in fits)
    ties = [c for c in fits if c.request_s <= fastest * (1 + TIE_FRACTION)]
    # ties: no offload, fewer components moved, more resident layers, shallower prefetch, sglang's default policy
    return min(ties, key=lambda c: (c.offload, len(c.offloaded), -sum(c.resident_per_group), c.prefetch,
                                    c.policy != "leading", c.request_s))


def _pinned_notes(plan: Plan, pinned: dict, want: dict, best: _Cand, free_best: _Cand | None, ms: float) -> None:
    for setting, value in pinned.items():
        if setting not in want or _same(value, want[setting]):
            continue
        plan.notes.append(f"{setting}={value!r} is pinned by the user; would have chosen {want[setting]!r}")
    dit_flags = ("dit_layerwise_offload", "dit_layerwise_resident_layers", "dit_offload_prefetch_size",
                 "dit_layerwise_residency_policy")
    if free_best is not None and any(f in pinned for f in dit_flags) and (
            free_best.offload != best.offload or free_best.resident != best.resident
            or free_best.prefetch != best.prefetch or free_best.policy != best.policy):
        what = ("the DiT fully resident" if not free_best.offload else
                f"{free_best.resident} resident layers, prefetch {free_best.prefetch}, {free_best.policy}")
        plan.notes.append(
            f"pinned DiT flags: would have chosen {what}; predicted cost "
            f"{(best.sim.step_s - free_best.sim.step_s) * ms:+.0f} ms per step "
            f"({best.sim.step_s * ms:.0f} vs {free_best.sim.step_s * ms:.0f} ms), "
            f"{gib(best.vram - free_best.vram, signed=True)}")


def format_plan(plan: Plan) -> str:
    p = plan.predicted
    lines = [f"autoperf plan ({plan.objective}): predicted step {p.step_ms:.0f} ms "
             f"(compute {p.compute_ms:.0f}, copy {p.copy_ms:.0f}, exposed {p.exposed_copy_ms:.0f}; "
             f"resident would be {p.resident_step_ms:.0f}), VRAM {gib(p.vram_bytes, unit=False)} of {gib(p.budget_bytes)}"]
    d = plan.dit
    if d.offload:
        lines.append(f"  DiT: layerwise, {sum(d.resident_per_group)}/{d.total_layers} layers resident "
                     f"(setting {d.resident_layers}, {d.policy}), prefetch {d.prefetch_layers}")
    else:
        lines.append("  DiT: fully resident")
    for c in plan.changes:
        lines.append(f"  {c.setting}: {c.before!r} -> {c.after!r}  ({c.reason})")
    if not plan.changes:
        lines.append("  no changes")
    for n in plan.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)
