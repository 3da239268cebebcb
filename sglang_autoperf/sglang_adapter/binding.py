"""Where sglang calls the plugin: the hooks registered with sglang's HookRegistry, the startup
plan written into ServerArgs before workers spawn, the worker's attach. The top of the package:
it imports startup and the live tuner; what sglang *is* comes from sglang_contract.

Every hook body is guarded: a failure of ours logs one line and leaves sglang's own settings in
effect and the user's run going.
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Callable

from sglang_autoperf.sglang_adapter import contract as sc
from sglang_autoperf.log import logger, step_aside
from sglang_autoperf.measure import live
from sglang_autoperf.settings import Settings
from sglang_autoperf.startup import RunContext, StartupPlan, apply_cached_tuning, plan_startup


# The plan rides inside ServerArgs (pickled to every worker by sglang's ServerArgsPayload).
PLAN_ATTR = "autoperf_plan"


class PluginRun:
    """This process's plugin state: the user's settings (set once, by register_hooks), whether
    the CPU fallbacks are registered, and what the worker measures (measure/live.LiveRun)."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.cpu_fallbacks_registered = False
        self.live = live.LiveRun()


RUN = PluginRun()  # one per process: sglang's HookRegistry calls module-level hooks


def _guarded(what: str, fallback: Any = None) -> Callable:
    """A hook body that can never raise into sglang."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # the user's run matters more than our plan
                step_aside(what, exc)
                return fallback

        return wrapper

    return deco


def register_hooks(settings: Settings) -> None:
    """Called from the plugin callback in every process: registration only, nothing resolved."""
    RUN.settings = settings
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry, HookType

    HookRegistry.register(sc.TARGET_LAUNCH, _before_launch_server, HookType.BEFORE)
    HookRegistry.register(sc.TARGET_WORKER_INIT, _after_worker_init, HookType.AFTER)
    register_cpu_fallbacks()
    if settings.calibrate:
        HookRegistry.register(sc.TARGET_DENOISE_LOOP, RUN.live.around_denoising_loop, HookType.AROUND)
        HookRegistry.register(sc.TARGET_DENOISE_STEP, RUN.live.around_denoising_step, HookType.AROUND)


def register_cpu_fallbacks() -> None:
    """Route the three sgl-kernel CPU ops PyPI's sgl-kernel lacks to sglang's native code.

    Each wrapper calls the original first; only if that raises on CPU tensors does it switch,
    once and for good, to the native implementation. A run that works without us is unchanged.
    """
    if RUN.cpu_fallbacks_registered:  # the test-support plugin may ask too, in the same process
        return
    RUN.cpu_fallbacks_registered = True
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry, HookType

    for target, kind in sc.CPU_FALLBACKS:
        HookRegistry.register(target, _make_cpu_fallback(target, kind), HookType.AROUND)


def _make_cpu_fallback(target: str, kind: str) -> Callable:
    state = {"native": False}
    short = target.rsplit(".", 2)[-2] + "." + target.rsplit(".", 1)[-1]

    def native(*args, **kwargs):
        if kind == "method":
            self, rest = args[0], args[1:]
            return self.forward_native(*rest, **kwargs)
        from sglang.kernels.ops.diffusion.common.fallback_torch import fuse_scale_shift_kernel_native

        return fuse_scale_shift_kernel_native(*args, **kwargs)

    def hook(original, *args, **kwargs):
        if state["native"]:
            return native(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        except (RuntimeError, AttributeError, NotImplementedError, AssertionError, ImportError, OSError) as exc:
            if not _on_cpu(args):
                raise
            state["native"] = True
            logger().info(
                "[autoperf-cpu-compat] %s is unavailable on this CPU (%s); using sglang's native implementation",
                short,
                type(exc).__name__,
            )
            return native(*args, **kwargs)

    return hook


def _on_cpu(args: tuple) -> bool:
    for a in args:
        device = getattr(a, "device", None)
        if device is not None and getattr(device, "type", None) is not None:
            return device.type == "cpu"
    return False


def _describe_request(ctx) -> str:
    known = [f"{ctx.width}x{ctx.height}" if ctx.width and ctx.height else None,
             f"{ctx.num_frames} frames" if ctx.num_frames else None,
             f"{ctx.steps} steps" if ctx.steps else None]
    known = [k for k in known if k]
    return ", ".join(known) if known else "shape unknown until the first request"


def run_context(server_args, request: dict[str, Any] | None = None):
    """`request`: the sampling parameters `sglang generate` parsed (None: serve, Python API)."""
    pinned = sc.pinned_flags(server_args)
    return RunContext(
        model_path=str(server_args.model_path),
        platform=sc.platform_name(),
        num_gpus=int(server_args.num_gpus or 1),
        base_gpu_id=int(getattr(server_args, "base_gpu_id", 0) or 0),
        performance_mode=str(getattr(server_args, "performance_mode", "auto")),
        pinned=pinned,
        current=sc.current_settings(server_args),
        identity=sc.worker_identity(server_args),
        expected_requests=sc.one_shot_requests(request),
        fixed_knobs=tuple(sorted(sc.pinned_placement_knobs(pinned))),
        live_blocker=sc.live_placement_blocker(server_args),
        policies=sc.residency_policies(),
        **sc.workload_hints(server_args, request),
        **sc.model_resolution(server_args),
    )


def _saved_fields(server_args) -> dict[str, Any]:
    names = sc.PLANNED_FIELDS + sc.PARALLEL_DERIVED + ("layerwise_offload_components", "sp_split_auto")
    return {name: copy.copy(getattr(server_args, name, None)) for name in names}


def _before_launch_server(server_args, *args, **kwargs):
    """BEFORE hook on launch_server: probe, plan, write the plan into ServerArgs."""
    if getattr(server_args, PLAN_ATTR, None):  # launched twice (pool roles): plan once
        return None
    saved = _saved_fields(server_args)
    try:
        startup = _plan_and_apply(server_args)
    except Exception as exc:
        for name, value in saved.items():  # leave no half-applied plan behind
            setattr(server_args, name, value)
        step_aside("planning at startup", exc)
        return None
    setattr(server_args, PLAN_ATTR, startup.to_json())
    return None


def _plan_and_apply(server_args):
    settings = RUN.settings
    assert settings is not None
    settings.maybe_fail("apply")
    ctx = run_context(server_args, sc.generate_cmd_request())
    log = logger()
    log.info(
        "[autoperf] main process sees model %s on platform %s (%s); request %s; flags pinned by the user: %s",
        ctx.model_path,
        ctx.platform,
        f"{ctx.num_gpus} GPU(s)" if ctx.platform != "cpu" else "no GPU",
        _describe_request(ctx),
        ", ".join(f"--{k.replace('_', '-')}" for k in ctx.pinned) or "none",
    )
    startup = plan_startup(ctx, settings)
    if not startup.active:
        log.warning("[autoperf] %s; sglang's own settings are in effect", startup.reason)
        return startup
    # The tuning cache is keyed by the ServerArgs the workers will run (the layout after the plan),
    # so the key is taken from a copy with the plan applied: startup and workers build one key.
    preview = copy.deepcopy(server_args)
    sc.apply_changes(preview, startup.changes, pinned=set(ctx.pinned))
    apply_cached_tuning(startup, ctx, settings, sc.worker_identity(preview))
    applied = sc.apply_changes(server_args, startup.changes, pinned=set(ctx.pinned))
    startup.changes = applied
    for change in applied:
        log.info(
            "[autoperf] set %s: %r -> %r: %s", change["setting"], change["before"], change["after"], change["reason"]
        )
    for note in startup.notes:
        log.info("[autoperf] %s", note)
    log.info("[autoperf] plan: %s", startup.summary())
    return startup


def received_plan(server_args):
    text = getattr(server_args, PLAN_ATTR, None)
    return StartupPlan.from_json(text) if text else None


@_guarded("the worker's plan check")
def _after_worker_init(result, worker, *args, **kwargs):
    settings = RUN.settings
    assert settings is not None
    settings.maybe_fail("worker")
    plan = received_plan(worker.server_args)
    rank = getattr(worker, "rank", "?")
    if plan is None:
        logger().info("[autoperf] worker rank %s received no plan; sglang's own settings are in effect", rank)
        return None
    logger().info("[autoperf] worker rank %s received plan: %s", rank, plan.summary())
    if plan.active and settings.calibrate:
        RUN.live.attach_worker(worker, plan, settings)
    return None

