"""probe -> plan at startup, free of sglang: the adapter hands in a RunContext of plain values
read from ServerArgs and gets back a StartupPlan to write into them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sglang_autoperf.cache import COMPILE_OBJECTIVE, TuningCache, format_when, shape_bucket, tuning_key
from sglang_autoperf.plan.budget import BudgetError, parse_vram_budget
from sglang_autoperf.plan.objective import placement_objective
from sglang_autoperf.plan.planner import make_plan
from sglang_autoperf.probe.gpu import probe_gpus
from sglang_autoperf.probe.model import ModelProbeError, probe_model
from sglang_autoperf.probe.workload import workload_for
from sglang_autoperf.retune.compression import AB_STEPS
from sglang_autoperf.retune.schedule import (
    BASELINE_STEPS, MAX_WARMUP_S, STEPS_PER_TRIAL, calibration_steps, warmup_candidates)
from sglang_autoperf.settings import Settings
from sglang_autoperf.sglang_adapter.contract import PLACEMENT_KNOB_FLAGS
from sglang_autoperf.trace import PLACEMENT_KNOBS, placement_problem
from sglang_autoperf.units import gib


@dataclass(frozen=True)
class RunContext:
    """What the main process knows before any weight loads, as plain values."""

    model_path: str
    platform: str  # "cuda", "cpu", "rocm", "mps", "npu", "xpu", ...
    num_gpus: int
    base_gpu_id: int
    performance_mode: str  # sglang's --performance-mode
    pinned: dict[str, Any]  # flags the user set explicitly, with their values
    current: dict[str, Any]  # sglang's effective values for the settings we may change
    width: int | None = None  # request shape, where known (CLI args, warmup settings)
    height: int | None = None
    num_frames: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # versions, layout, LoRA: part of the cache key
    expected_requests: int | None = None  # 1 for one-shot `sglang generate`; None: serving, unknown
    fixed_knobs: tuple[str, ...] = ()  # placement knobs the user pinned (trace.PLACEMENT_KNOBS)
    live_blocker: str | None = None  # why the placement cannot change live in this run, if it cannot
    policies: tuple[str, ...] = ("leading", "strided")  # residency policies the runtime knows
    # how sglang resolves the folder (--model-id, --backend): the probe resolves it the same way
    model_id: str | None = None
    backend: str | None = None


@dataclass
class StartupPlan:
    """What travels from the main process to every worker (as JSON inside ServerArgs)."""

    active: bool  # False: the plugin steps aside in this run (reason says why)
    reason: str
    model_path: str
    platform: str
    pinned: list[str]
    changes: list[dict[str, Any]] = field(default_factory=list)  # {setting, before, after, reason}
    notes: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None  # the planner's full Plan, when one was made
    model_fingerprint: str | None = None
    workload: dict[str, Any] | None = None
    gpu_key: dict[str, Any] | None = None  # what of the GPU keys a tuning result (not free memory, not UUID)
    budget_bytes: int | None = None  # the user's VRAM budget per GPU (SGLANG_AUTOPERF_VRAM_BUDGET), if any
    bucket: str | None = None  # the request shape the plan assumed (cache.shape_bucket)
    shape_known: bool = False  # that shape came from the user (CLI, warmup settings), not a default
    # the least free memory of the GPUs when the plan was made (nothing of ours on them yet): the
    # workers' memory limit counts what other processes held then (measure/live.memory_limit_bytes)
    free_bytes_at_start: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> "StartupPlan":
        return cls(**json.loads(text))

    @property
    def compression_predicted(self) -> bool:
        """The planner predicted compressed layer streaming pays at its placement (issue 18)."""
        return bool(((self.plan or {}).get("dit") or {}).get("compress"))

    def summary(self) -> str:
        if not self.active:
            return f"stepping aside: {self.reason}"
        if not self.changes:
            return f"no changes ({self.reason})"
        return "; ".join(f"{c['setting']}: {c['before']!r} -> {c['after']!r}" for c in self.changes)


# Platforms we have measured and plan for; everything else gets one line and no changes.
TUNED_PLATFORMS = ("cuda",)


def plan_startup(ctx: RunContext, settings: Settings, gpu=None) -> StartupPlan:
    """probe -> plan. Raises only on internal bugs; expected problems become an inactive plan.
    `gpu`: a GPU profile to plan for instead of the live one (`sglang-autoperf plan --gpu-snapshot`),
    so the dry run and a real run plan by the same code."""
    pinned = sorted(ctx.pinned)
    base = dict(model_path=ctx.model_path, platform=ctx.platform, pinned=pinned)
    if ctx.performance_mode == "manual":
        return StartupPlan(active=True, reason="--performance-mode manual: reporting only", **base)
    if ctx.platform == "cpu":
        # Layerwise offload never activates on CPU and forcing it kills the worker (docs/measured.md §4).
        return StartupPlan(active=True, reason=(
            "CPU platform: no setting changed; sgl-kernel ops this CPU lacks run as sglang's own native code, "
            "see the [autoperf-cpu-compat] lines"), **base)
    if ctx.platform not in TUNED_PLATFORMS:
        return StartupPlan(
            active=False,
            reason=f"platform {ctx.platform!r} is not tuned yet (only {', '.join(TUNED_PLATFORMS)})",
            **base,
        )
    probed = _probe(ctx, settings, gpu)
    if isinstance(probed, str):
        return StartupPlan(active=False, reason=probed, **base)
    return _plan_cuda(ctx, settings, base, *probed)


def _bad_request_sizes(ctx: RunContext) -> str | None:
    bad = {k: v for k, v in (("width", ctx.width), ("height", ctx.height), ("num_frames", ctx.num_frames),
                             ("steps", ctx.steps)) if v is not None and (type(v) is not int or v <= 0)}
    if not bad:
        return None
    return "the request's " + ", ".join(f"{k} {v!r}" for k, v in bad.items()) + " is not a positive whole number; nothing planned"


def request_shape(ctx: RunContext, is_video: bool) -> tuple[int, int, int]:
    """(width, height, frames) of the request planned for: the user's where known, else the family's
    usual size (Wan 832x480x81, image models 1024x1024)."""
    if is_video:
        return ctx.width or 832, ctx.height or 480, ctx.num_frames or 81
    return ctx.width or 1024, ctx.height or 1024, 1


def _probe(ctx: RunContext, settings: Settings, gpu=None) -> tuple[Any, Any, int | None] | str:
    """(GPU profile, model profile, budget bytes), or why there is nothing to plan."""
    if gpu is None:
        gpu = probe_gpus(base_gpu_id=ctx.base_gpu_id, num_gpus=ctx.num_gpus)
    if not gpu.has_gpu:
        return f"no GPU visible to NVML: {gpu.no_gpu_reason}"
    mig = [d.index for d in gpu.devices if d.mig_enabled]
    if mig:
        return f"MIG is enabled on GPU {mig}: slices are not tuned yet"
    if ctx.num_gpus > len(gpu.devices):
        return f"--num-gpus {ctx.num_gpus}: the GPU profile ({gpu.source}) has {len(gpu.devices)} GPU(s)"
    try:
        model = probe_model(ctx.model_path, model_id=ctx.model_id, backend=ctx.backend)
    except ModelProbeError as exc:
        return f"cannot profile the model: {exc}"
    free = min(d.memory_free_bytes for d in gpu.devices)
    budget = None
    if settings.vram_budget:
        try:
            budget = parse_vram_budget(settings.vram_budget, free)
        except BudgetError as exc:
            return str(exc)
    return _bad_request_sizes(ctx) or (gpu, model, budget)


def _plan_cuda(ctx: RunContext, settings: Settings, base: dict[str, Any], gpu, model, budget: int | None) -> StartupPlan:
    width, height, frames = request_shape(ctx, model.is_video)
    workload = workload_for(
        model, width, height, num_frames=frames, steps=ctx.steps, guidance_scale=ctx.guidance_scale
    )
    plan = make_plan(
        gpu=gpu, model=model, workload=workload, pinned=ctx.pinned, current=ctx.current, budget_bytes=budget,
        lossy=settings.lossy, allow_compile=settings.compile, performance_mode=ctx.performance_mode,
        num_gpus=ctx.num_gpus, platform=ctx.platform, expected_requests=ctx.expected_requests,
    )
    plan_dict = plan.to_dict()
    first = gpu.devices[0]
    return StartupPlan(
        active=True,
        reason="planned from probes" + (f" within a {gib(budget)} budget" if budget else ""),
        changes=[dict(c) for c in plan_dict.get("changes", [])],
        notes=list(plan_dict.get("notes", [])),
        plan=plan_dict,
        model_fingerprint=model.fingerprint,
        workload=asdict(workload),
        gpu_key={"name": first.name, "memory_total_bytes": first.memory_total_bytes,
                 "link": f"pcie{first.pcie_generation}x{first.pcie_width}"},
        budget_bytes=budget,
        free_bytes_at_start=min(d.memory_free_bytes for d in gpu.devices),
        bucket=shape_bucket(width, height, frames, 1, workload.cfg_passes > 1),
        shape_known=bool(ctx.width and ctx.height),
        **base,
    )


def apply_cached_tuning(startup: StartupPlan, ctx: RunContext, settings: Settings, identity: dict[str, Any]) -> None:
    """What the tuning cache adds to a plan: a measured placement or a calibration warmup, or no
    compile where eager measured faster. `identity` is the adapter's worker_identity of the
    ServerArgs with the plan applied, so this key is the one every worker builds."""
    if not (settings.calibrate and startup.plan and startup.bucket):
        return
    plan_dict = startup.plan
    if plan_dict["dit"]["offload"]:
        _calibration_changes(ctx, settings, plan_dict, startup, identity)
    elif startup.shape_known:
        _compile_from_cache(ctx, settings, plan_dict, startup, identity)
    startup.changes = [dict(c) for c in plan_dict.get("changes", [])]
    startup.notes = list(plan_dict.get("notes", []))


def _set_change(plan_dict: dict[str, Any], ctx: RunContext, setting: str, after: Any, reason: str) -> None:
    """Replace or add one change, unless the user pinned that flag (then say so in a note)."""
    changes = plan_dict["changes"]
    if setting in ctx.pinned:
        if ctx.pinned[setting] != after:
            plan_dict["notes"].append(f"{setting} is pinned to {ctx.pinned[setting]!r}; would have set {after!r}: {reason}")
        return
    before = ctx.current.get(setting)
    changes[:] = [c for c in changes if c["setting"] != setting]
    if before != after:
        changes.append({"setting": setting, "before": before, "after": after, "reason": reason})


def _startup_key(startup: StartupPlan, ctx: RunContext, settings: Settings, identity: dict[str, Any],
                 objective: str):
    return tuning_key(fingerprint=startup.model_fingerprint or "", gpu_key=startup.gpu_key or {}, identity=identity,
                      bucket=startup.bucket or "", batch_size=1, budget=settings.vram_budget, objective=objective)


def _cached_placement(plan_dict: dict[str, Any], ctx: RunContext, cached, bucket: str) -> bool:
    """Apply a cached placement's free knobs (pinned ones stay as the user set them); False, with a
    note, when the entry does not fit this model (then it is a miss)."""
    p = cached.placement
    problem = placement_problem(p, [int((plan_dict.get("dit") or {}).get("total_layers") or 0)], ctx.policies)
    if problem:
        plan_dict["notes"].append(f"ignoring the tuning cache entry for {bucket}: {problem}")
        return False
    if cached.list_placement:
        # sglang's flags give every list one count: the plan's own (within the budget) stays, and
        # each worker applies the measured per-list placement before its first request
        plan_dict["notes"].append(f"tuning cache hit for {bucket}: {cached.chosen().label()} (per layer list, "
                                  f"applied by the worker before the first request); no calibration needed")
        return True
    why = f"measured by an earlier calibration of {bucket} ({format_when(cached.created_at)}): {cached.reason}"
    for knob, (dit_flag, _per_component) in PLACEMENT_KNOB_FLAGS.items():
        if knob not in ctx.fixed_knobs:
            _set_change(plan_dict, ctx, dit_flag, getattr(p, knob), why)
    plan_dict["notes"].append(f"tuning cache hit for {bucket}: {p.label()}; no calibration needed")
    return True


def _calibration_changes(ctx: RunContext, settings: Settings, plan_dict: dict[str, Any], startup: StartupPlan,
                         identity: dict[str, Any]) -> None:
    """A tuned placement from the cache, or a warmup request to calibrate on, for this DiT stream.

    With the request shape unknown here (Python API, `sglang serve` without warmup shapes), the
    bucket above is a guess: a miss on it proves nothing, so a warmup is scheduled only on a first
    start (no entry for this model, GPU and layout at all); otherwise each worker looks its
    buckets up per request and calibrates a new shape across its first requests."""
    bucket = startup.bucket or ""
    if ctx.live_blocker or set(PLACEMENT_KNOBS) <= set(ctx.fixed_knobs):
        plan_dict["notes"].append(
            f"no calibration: {ctx.live_blocker or 'resident layers, prefetch and policy are all pinned'}; "
            f"the placement stands as set")
        return
    key = _startup_key(startup, ctx, settings, identity, placement_objective(ctx.performance_mode, ctx.pinned.get("dit_layerwise_offload")))
    cache = TuningCache(settings.cache_dir)
    cached = cache.get(key) if startup.shape_known else None
    if cached is None and not startup.shape_known and any(_same_setup(k, key) for k, _ in cache.entries()):
        plan_dict["notes"].append(
            "request shape unknown before the first request; tuned shapes are in the cache and applied "
            "per request, new shapes are calibrated across the first requests")
        return
    if cached is not None and _cached_placement(plan_dict, ctx, cached, bucket):
        return
    # the worker measures compressed against raw streaming where the plan predicts it pays and the
    # user left the choice to it: on the warmup too, so that a one-request run decides it (a
    # `sglang generate` of 8 steps could not: benchmarks/results/2026-11-29-h200-klein)
    ab_steps = AB_STEPS if startup.compression_predicted and settings.compress == "auto" else 0
    _schedule_warmup(ctx, plan_dict, bucket, ab_steps)


def _schedule_warmup(ctx: RunContext, plan_dict: dict[str, Any], bucket: str, ab_steps: int = 0) -> None:
    """A warmup request to calibrate on (its output is discarded), bounded in time; `ab_steps`
    more after the calibration for the compressed-vs-raw A/B."""
    if ctx.current.get("warmup_mode") not in (None, "off"):
        plan_dict["notes"].append(f"calibrating during the warmup the user configured ({ctx.current.get('warmup_mode')})")
        return
    if "warmup_mode" in ctx.pinned:
        plan_dict["notes"].append("warmup is pinned off: calibrating across the first requests instead")
        return
    step_ms = float((plan_dict.get("predicted") or {}).get("step_ms") or 0.0)
    candidates = warmup_candidates(step_ms, ab_steps)
    if candidates < 1:
        plan_dict["notes"].append(
            f"no calibration warmup: a step is predicted at {step_ms / 1e3:.1f} s, so even one candidate "
            f"({calibration_steps(1)} steps) would cost more than the {MAX_WARMUP_S:.0f} s bound; the first requests "
            f"are measured instead")
        return
    steps = calibration_steps(candidates) + ab_steps
    _set_change(plan_dict, ctx, "warmup_mode", "request",
                f"no tuning for {bucket} in the cache: calibrate resident layers and prefetch on a warmup copy "
                f"of the first request, so no real request changes placement mid-way")
    _set_change(plan_dict, ctx, "warmup_steps", steps,
                f"{steps} warmup steps: {BASELINE_STEPS} at the planned placement, then {STEPS_PER_TRIAL} for each of "
                f"up to {candidates} candidates and {STEPS_PER_TRIAL} at the planned placement again"
                + (f", then {ab_steps} for compressed vs raw streaming at the chosen placement" if ab_steps else "")
                + f" (bounded to ~{MAX_WARMUP_S:.0f} s at the predicted {step_ms:.0f} ms/step; the result is cached)")


def _compile_from_cache(ctx: RunContext, settings: Settings, plan_dict: dict[str, Any], startup: StartupPlan,
                        identity: dict[str, Any]) -> None:
    """Where this plan turns torch.compile on and an earlier run measured eager faster at this
    shape (measure/compile_check.py), do not compile at all: the compile time is saved too."""
    change = next((c for c in plan_dict["changes"] if c["setting"] == "enable_torch_compile" and c["after"] is True), None)
    if change is None:
        return
    cached = TuningCache(settings.cache_dir).get(_startup_key(startup, ctx, settings, identity, COMPILE_OBJECTIVE))
    if cached is None or cached.compiled is not False:
        return
    plan_dict["changes"].remove(change)
    plan_dict["notes"].append(
        f"torch.compile left off: an earlier check of {startup.bucket} ({format_when(cached.created_at)}) measured "
        f"eager faster: {cached.reason}")


def _same_setup(a, b) -> bool:
    """Same model, GPU, layout and versions: everything in a key but the request shape."""
    return replace(a, shape_bucket="", batch_size=0) == replace(b, shape_bucket="", batch_size=0)
