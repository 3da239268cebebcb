"""What sglang 0.5.23 is, for this plugin: the one module that knows sglang's internals (hook
targets, ServerArgs fields and what sglang derives from them, LayerwiseOffloadManager, the
request objects). When sglang changes, this is the room to repair, and `contract_problems()` says
what moved; tests/test_sglang_contract.py checks each assumption against the installed sglang.

It sits at the bottom of the package: it imports nothing of ours, and everything
that needs sglang's meaning (startup, measure, the binding) calls down into it. Where sglang calls
*us*, see sglang_adapter/binding.py.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence


# Hook targets (dotted paths resolved by sglang's HookRegistry when hooks are applied).
# launch_server(server_args, ...) runs in the main process for `sglang generate`, `sglang serve`
# and DiffGenerator.from_pretrained, after ServerArgs is final and before workers spawn.

# Hook targets (dotted paths resolved by sglang's HookRegistry when hooks are applied).
# launch_server(server_args, ...) runs in the main process for `sglang generate`, `sglang serve`
# and DiffGenerator.from_pretrained, after ServerArgs is final and before workers spawn.
TARGET_LAUNCH = "sglang.multimodal_gen.runtime.launch_server.launch_server"


TARGET_WORKER_INIT = "sglang.multimodal_gen.runtime.managers.gpu_worker.GPUWorker.init_device_and_model"


TARGET_DENOISE_LOOP = (
    "sglang.multimodal_gen.runtime.pipelines_core.stages.denoising.DenoisingStage._run_denoising_loop"
)


TARGET_DENOISE_STEP = (
    "sglang.multimodal_gen.runtime.pipelines_core.stages.denoising.DenoisingStage._run_denoising_step"
)


# `sglang generate`'s command body. Not hooked: `sglang generate` imports it by name before plugin
# hooks are applied. It builds `sampling_params_kwargs` (flags and --config file, as sglang reads
# them) and calls launch_server below it on the same stack, where the plan reads them.
GENERATE_CMD = "sglang.multimodal_gen.runtime.entrypoints.cli.generate.generate_cmd"


GENERATE_CMD_REQUEST_LOCAL = "sampling_params_kwargs"


# sglang 0.5.23's CPU path calls sgl-kernel ops that only a CPU build of sgl-kernel has (not on
# PyPI). These are routed to sglang's own native implementations, only after the original failed.
CPU_FALLBACKS = (
    ("sglang.multimodal_gen.runtime.layers.layernorm._NormScaleShift.forward_cpu", "method"),
    ("sglang.multimodal_gen.runtime.layers.layernorm._ScaleResidualNormScaleShift.forward_cpu", "method"),
    ("sglang.kernels.ops.diffusion.modulate.scale_shift_triton.fuse_scale_shift_kernel", "function"),
)


# The ServerArgs fields a plan may change.
PLANNED_FIELDS = (
    "dit_layerwise_offload",
    "dit_offload_prefetch_size",
    "dit_layerwise_resident_layers",
    "dit_layerwise_residency_policy",
    "dit_cpu_offload",
    "text_encoder_cpu_offload",
    "image_encoder_cpu_offload",
    "vae_cpu_offload",
    "enable_torch_compile",
    "attention_backend",
    "enable_attention_backend_autotune",
    "enable_cfg_parallel",
    "ulysses_degree",
    "ring_degree",
    "warmup_mode",
    "warmup_steps",
    # issue 20 (plan/layout.py): the multi-GPU layout's other two fields
    "kv_gather_degree",
    "use_fsdp_inference",
)


# Fields whose change requires re-deriving sglang's layerwise component selection.
_RESIDENCY_FIELDS = {
    "dit_layerwise_offload": "dit",
    "text_encoder_cpu_offload": "text_encoder",
    "image_encoder_cpu_offload": "image_encoder",
    "vae_cpu_offload": "vae",
}


# The flags that pin each knob of a live placement (trace.PLACEMENT_KNOBS): the DiT-wide
# flag and sglang's per-component map (any entry in the map counts: it may name the DiT).
PLACEMENT_KNOB_FLAGS = {
    "resident_layers": ("dit_layerwise_resident_layers", "layerwise_resident_layers"),
    "prefetch_layers": ("dit_offload_prefetch_size", "layerwise_prefetch_size"),
    "policy": ("dit_layerwise_residency_policy", "layerwise_residency_policy"),
}


# sglang derives these from the parallel flags a plan may change; a user who set one of them has
# pinned the planned flag too (--cfg-parallel-size 2 decides enable_cfg_parallel: ServerArgs.
# _adjust_parallelism gives it precedence).
PARALLEL_ALIASES = {
    "enable_cfg_parallel": ("cfg_parallel_degree",),
    "ulysses_degree": ("sp_degree", "kv_gather_degree"),
    "ring_degree": ("sp_degree", "kv_gather_degree"),
    # issue 20: sglang assigns K/V-gather only when no SP flag was given (_adjust_parallelism)
    "kv_gather_degree": ("sp_degree", "ulysses_degree", "ring_degree"),
}


# issue 20: the attention backends sglang runs ring attention on (server_args.py
# RING_CAPABLE_ATTENTION_BACKENDS; it picks one in __post_init__, before a plan could set ring_degree).
RING_ATTENTION_BACKENDS = ("fa", "sage_attn")


PARALLEL_DERIVED = ("cfg_parallel_degree", "sp_degree", "ulysses_degree", "ring_degree", "kv_gather_degree")


# What the live path reads and calls on sglang's LayerwiseOffloadManager (set before its
# `enabled` check, so a disabled manager built on the CPU has them too).
_MANAGER_ATTRIBUTES = ("prefetch_size", "resident_layers", "residency_policy", "residency_lifetime",
                       "num_layers", "layers_attr_str", "model", "_streamed_order", "_resident_set")


_MANAGER_METHODS = ("release_all", "prepare_for_next_req", "prefetch_layer")


_SERVER_ARGS_METHODS = ("_adjust_parallelism", "_validate_parallelism", "_parse_component_value_map",
                        "is_arg_explicitly_set", "_adjust_layerwise_offload_components", "load_config_file")


def resolve_target(dotted: str):
    """A hook target as sglang's HookRegistry finds it: the longest importable module prefix, then
    attributes. Raises ImportError/AttributeError when it is not there."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module of {dotted} can be imported")


def _named_fields() -> set[str]:
    named = set(PLANNED_FIELDS) | set(PARALLEL_DERIVED) | {"sp_split_auto", "layerwise_offload_components"}
    named |= {flag for flags in PLACEMENT_KNOB_FLAGS.values() for flag in flags}
    return named | {alias for aliases in PARALLEL_ALIASES.values() for alias in aliases}


def contract_problems() -> list[str]:
    """What of this module's assumptions the installed sglang breaks (empty: none). Run before
    trusting an sglang release newer than the ones this module was checked against."""
    import dataclasses

    problems = []
    targets = [v for k, v in globals().items() if k.startswith("TARGET_")] + [t for t, _ in CPU_FALLBACKS]
    for target in targets:
        try:
            if not callable(resolve_target(target)):
                problems.append(f"hook target {target} is not callable")
        except Exception as exc:
            problems.append(f"hook target {target} is missing ({type(exc).__name__})")
    try:
        if GENERATE_CMD_REQUEST_LOCAL not in resolve_target(GENERATE_CMD).__code__.co_varnames:
            problems.append(f"{GENERATE_CMD} has no local {GENERATE_CMD_REQUEST_LOCAL} (the request's shape)")
    except Exception as exc:
        problems.append(f"{GENERATE_CMD} is missing ({type(exc).__name__})")
    try:
        from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo
        from sglang.multimodal_gen.runtime.server_args import ServerArgs
    except Exception as exc:
        return problems + [f"sglang's ServerArgs or layerwise offload cannot be imported ({type(exc).__name__})"]
    fields = {f.name for f in dataclasses.fields(ServerArgs)}
    problems += [f"ServerArgs has no field {name}" for name in sorted(_named_fields() - fields)]
    problems += [f"ServerArgs has no method {m}" for m in _SERVER_ARGS_METHODS if not callable(getattr(ServerArgs, m, None))]
    problems += [f"layerwise offload has no {name}" for name in ("compute_streamed_layers", "RESIDENCY_POLICIES",
                 "RESIDENCY_LIFETIME_FORWARD", "LayerwiseOffloadManager") if not hasattr(lo, name)]
    if not problems:
        problems += _manager_problems(lo)
    return problems


def _manager_problems(lo) -> list[str]:
    import torch

    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Identity()])
    try:
        manager = lo.LayerwiseOffloadManager(model, layers_attr_str="blocks", num_layers=1, enabled=False)
    except Exception as exc:
        return [f"LayerwiseOffloadManager cannot be built as this module expects ({type(exc).__name__}: {exc})"]
    problems = [f"LayerwiseOffloadManager has no attribute {a}" for a in _MANAGER_ATTRIBUTES if not hasattr(manager, a)]
    return problems + [f"LayerwiseOffloadManager has no method {m}" for m in _MANAGER_METHODS
                       if not callable(getattr(lo.LayerwiseOffloadManager, m, None))]


def platform_name() -> str:
    from sglang.multimodal_gen.runtime.platforms import current_platform as p

    for name in ("cpu", "cuda", "rocm", "mps", "npu", "xpu", "musa"):
        probe = getattr(p, f"is_{name}", None)
        if probe is not None and probe():
            return name
    return type(p).__name__


def explicit_flags(server_args) -> set[str]:
    return set(getattr(server_args, "_explicit_arg_names", set()) or set())


def current_settings(server_args) -> dict[str, Any]:
    """sglang's effective values for what a plan may change (after its own auto-tuning)."""
    values = {name: getattr(server_args, name, None) for name in PLANNED_FIELDS}
    # sglang's auto mode may select the DiT for layerwise offload through the component list
    # without setting dit_layerwise_offload; what matters is where the DiT's weights will live.
    if platform_name() != "cpu":
        values["dit_layerwise_offload"] = bool(server_args.is_dit_layerwise_offload_selected)
    values["num_gpus"] = server_args.num_gpus
    values["layerwise_offload_components"] = list(server_args.layerwise_offload_components or [])
    return values


_HINT_FIELDS = {"width": "width", "height": "height", "num_frames": "num_frames",
                "num_inference_steps": "steps", "guidance_scale": "guidance_scale"}


def generate_cmd_request() -> dict[str, Any] | None:
    """The request `sglang generate` is about to serve, as sglang itself parsed it: the
    `sampling_params_kwargs` of the generate_cmd frame below us on the stack. None elsewhere
    (`sglang serve`, the Python API: their shapes arrive with the requests)."""
    import sys

    module, name = GENERATE_CMD.rsplit(".", 1)
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == name and frame.f_globals.get("__name__") == module:
            kwargs = frame.f_locals.get(GENERATE_CMD_REQUEST_LOCAL)
            return dict(kwargs) if isinstance(kwargs, dict) else None
        frame = frame.f_back
    return None


def workload_hints(server_args, request: dict[str, Any] | None) -> dict[str, Any]:
    """The request shape where it is known before any request: what `sglang generate` parsed, then
    the warmup settings. Never the host program's argv (under the Python API it is not ours)."""
    hints = {key: (request or {}).get(name) for name, key in _HINT_FIELDS.items()}
    resolutions = getattr(server_args, "warmup_resolutions", None)
    if resolutions and not hints.get("width"):
        first = str(resolutions[0] if isinstance(resolutions, (list, tuple)) else resolutions)
        if "x" in first:
            w, h = first.lower().split("x", 1)
            hints["width"], hints["height"] = int(w), int(h)
    if getattr(server_args, "warmup_num_frames", None) and not hints.get("num_frames"):
        hints["num_frames"] = server_args.warmup_num_frames
    return {k: v for k, v in hints.items() if v is not None}


def model_resolution(server_args) -> dict[str, str | None]:
    """What besides the folder decides which pipeline sglang runs: --model-id and --backend."""
    backend = getattr(server_args, "backend", None)
    return {"model_id": getattr(server_args, "model_id", None) or None,
            "backend": None if backend is None else str(getattr(backend, "value", backend))}


def one_shot_requests(request: dict[str, Any] | None) -> int | None:
    """`sglang generate` serves its prompt(s) and exits: one request (per prompt) to repay any
    start-up cost such as compile. Serving and the Python API: unknown (None)."""
    return 1 if request is not None else None


def pinned_placement_knobs(pinned: Any) -> frozenset[str]:
    """The placement knobs (trace.PLACEMENT_KNOBS) the user pinned with these flags."""
    names = set(pinned)
    return frozenset(knob for knob, flags in PLACEMENT_KNOB_FLAGS.items() if names & set(flags))


def _pinned_placement_text(server_args, explicit: set[str]) -> str:
    """The pinned placement flags with their values: part of the tuning key."""
    flags = sorted(f for flags in PLACEMENT_KNOB_FLAGS.values() for f in flags if f in explicit)
    return ",".join(f"{f}={getattr(server_args, f, None)!r}" for f in flags)


def residency_policies() -> tuple[str, ...]:
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    return tuple(lo.RESIDENCY_POLICIES)


# --- layer counts per ModuleList ------------------------------------------------------------
# sglang 0.5.23 turns the placement flags into per-list counts inline in
# LayerwiseOffloadableModuleMixin.configure_layerwise_offload (no function to call), and the
# manager clamps prefetch to [1, num_layers]; tests/test_sglang_contract.py builds real managers
# through that method and compares.

def resident_per_group(group_counts: Sequence[int], setting: float) -> tuple[int, ...]:
    """--dit-layerwise-resident-layers per ModuleList: <=0 none, <1 a fraction of each list (at
    least 1), >=1 a count applied to each list (capped)."""
    out = []
    for n in group_counts:
        if setting <= 0:
            out.append(0)
        elif setting < 1.0:
            out.append(max(1, int(round(setting * n))))
        else:
            out.append(min(n, int(setting)))
    return tuple(out)


def prefetch_per_group(group_counts: Sequence[int], setting: float) -> tuple[int, ...]:
    """--dit-offload-prefetch-size per ModuleList: <1 a fraction (0.0 = 1 layer), >=1 a count."""
    out = []
    for n in group_counts:
        p = 1 + int(round(setting * (n - 1))) if setting < 1.0 else int(setting)
        out.append(min(max(1, p), n))
    return tuple(out)


_LAYERWISE_MODULE = "sglang.multimodal_gen.runtime.managers.memory_managers.layerwise_offload"


@functools.lru_cache(maxsize=8192)
def streamed_layers(num_layers: int, resident_layers: int, policy: str) -> tuple[int, ...]:
    """The layers a manager streams (the rest stay resident). In a process that has sglang's
    offload module loaded (a server, a worker) this is sglang's own function; the bare CLI
    (`sglang-autoperf plan`) does not import sglang and uses the same rule copied below, which
    tests/test_sglang_contract.py checks against sglang's over every small case. Cached: the
    planner's simulation asks for the same few lists thousands of times."""
    lo = sys.modules.get(_LAYERWISE_MODULE)
    if lo is not None:
        return tuple(lo.compute_streamed_layers(num_layers=int(num_layers), resident_layers=int(resident_layers),
                                                policy=policy))
    return streamed_layers_without_sglang(num_layers, resident_layers, policy)


def streamed_layers_without_sglang(num_layers: int, resident_layers: int, policy: str) -> tuple[int, ...]:
    """sglang 0.5.23's compute_streamed_layers: `leading` streams the tail, `strided` spreads the
    streamed layers evenly over the list."""
    resident = min(max(0, resident_layers), num_layers)
    streamed = num_layers - resident
    if streamed <= 0:
        return ()
    if resident <= 0:
        return tuple(range(num_layers))
    if policy == "leading":
        return tuple(range(resident, num_layers))
    return tuple(round(i * num_layers / streamed) for i in range(streamed))


def live_placement_blocker(server_args) -> str | None:
    """Why sglang cannot change the DiT's placement between forward passes in this run (None: it
    can). Under `permanent` lifetime the resident layers have no host copy to stream back from."""
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    lifetimes = {str(getattr(server_args, "dit_layerwise_residency_lifetime", lo.RESIDENCY_LIFETIME_FORWARD))}
    per_component = getattr(server_args, "layerwise_residency_lifetime", None)
    if per_component:
        lifetimes |= {str(v) for v in server_args._parse_component_value_map(
            per_component, option="--layerwise-residency-lifetime").values()}
    if lifetimes - {lo.RESIDENCY_LIFETIME_FORWARD}:
        return (f"residency lifetime {', '.join(sorted(lifetimes - {lo.RESIDENCY_LIFETIME_FORWARD}))}: sglang keeps "
                f"those resident layers without a host copy, so their placement cannot change live")
    return None


def pinned_flags(server_args) -> dict[str, Any]:
    """Flags the user set, with their values; a derived parallel flag pins the one it decides."""
    explicit = explicit_flags(server_args)
    pinned = {name: getattr(server_args, name, None) for name in sorted(explicit)}
    for planned, aliases in PARALLEL_ALIASES.items():
        if planned not in pinned and explicit & set(aliases):
            pinned[planned] = getattr(server_args, planned, None)
    return pinned


def apply_changes(server_args, changes: list[dict[str, Any]], *, pinned: set[str]) -> list[dict[str, Any]]:
    """Write plan changes into ServerArgs, never touching a pinned flag, then re-derive what
    sglang derives from them (its own adjustments ran before this hook)."""
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload_components as lc

    applied = []
    residency_touched = parallel_touched = False
    pinned = set(pinned) | set(pinned_flags(server_args))
    for change in changes:
        name = change["setting"]
        if name not in PLANNED_FIELDS:
            raise ValueError(f"plan changes unknown ServerArgs field {name!r}")
        if name in pinned or server_args.is_arg_explicitly_set(name):
            continue  # the planner already reported what it would have done
        setattr(server_args, name, change["after"])
        residency_touched |= name in _RESIDENCY_FIELDS
        parallel_touched |= name in PARALLEL_ALIASES
        applied.append(dict(change))
    if residency_touched:
        _rederive_residency(server_args, lc)
    if parallel_touched:
        _rederive_parallelism(server_args, {c["setting"] for c in applied})
    return applied


def _rederive_parallelism(server_args, planned: set[str]) -> None:
    """sglang derived cfg_parallel_degree / sp_degree / ulysses / ring / kv-gather from the parallel
    flags before this hook; after a plan changed one of them, the derived ones are reset (where
    neither the user nor the plan set them) and derived again by sglang's own code, then checked
    by its own validation, so that e.g. enable_cfg_parallel=False never runs with degree 2."""
    explicit = explicit_flags(server_args)
    if "kv_gather_degree" in planned:
        # issue 20: sglang mirrors kv_gather_degree into ulysses_degree. With K/V-gather on, that copy
        # is derived again; with it off, the ulysses_degree the plan left as it was is the plan's.
        on = (server_args.kv_gather_degree or 1) > 1
        planned = set(planned) - {"ulysses_degree"} if on else set(planned) | {"ulysses_degree"}
    for name in PARALLEL_DERIVED:
        if name not in explicit and name not in planned:
            setattr(server_args, name, None)
    if "sp_split_auto" not in explicit:
        server_args.sp_split_auto = False
    server_args._adjust_parallelism()
    server_args._validate_parallelism()


def layout_rejection(server_args) -> str | None:
    """issue 20: why sglang's own validation refuses the parallel layout these ServerArgs hold (None:
    accepted). __post_init__ skips _validate_parallelism on the CPU platform, so it is run here."""
    try:
        server_args._validate_parallelism()
        server_args._validate_cfg_parallel()
    except ValueError as exc:
        return str(exc)
    return None


def _rederive_residency(server_args, lc) -> None:
    groups = list(server_args.layerwise_offload_components or [])
    for name, group in _RESIDENCY_FIELDS.items():
        if server_args.is_arg_explicitly_set("layerwise_offload_components"):
            break
        value = getattr(server_args, name)
        # A component we place resident (or component-offload) must leave sglang's auto-chosen
        # layerwise group list, or the list would still stream it.
        if name == "dit_layerwise_offload":
            if not value and group in groups:
                groups.remove(group)
        elif value is not None and group in groups and group != "dit":
            groups.remove(group)
    server_args.layerwise_offload_components = groups or None
    if server_args.dit_layerwise_offload:
        # layerwise streaming replaces whole-DiT component offload
        if not server_args.is_arg_explicitly_set("dit_cpu_offload"):
            server_args.dit_cpu_offload = False
    elif not server_args.is_arg_explicitly_set("dit_cpu_offload") and server_args.dit_layerwise_offload is False:
        server_args.dit_cpu_offload = False
    server_args._adjust_layerwise_offload_components()


def compiled_dit_modules(pipeline) -> list:
    """DiT modules sglang compiled. sglang 0.5.23 compiles with `nn.Module.compile` (the whole DiT,
    or its blocks with --regional-compile: DenoisingStage._maybe_torch_compile), which stores the
    compiled callable in `_compiled_call_impl`; `nn.Module.__call__` uses it while it is set."""
    found = []
    for name, module in (getattr(pipeline, "modules", {}) or {}).items():
        if name.startswith("transformer") and hasattr(module, "modules"):
            found += [m for m in module.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    return found


class CompileSwitch:
    """Runs sglang's compiled DiT modules compiled or eager, and back, without recompiling:
    eager clears `_compiled_call_impl`, compiled restores the callable sglang made."""

    def __init__(self, modules: list):
        self._impls = [(m, m._compiled_call_impl) for m in modules]

    def __len__(self) -> int:
        return len(self._impls)

    def set(self, compiled: bool) -> None:
        for module, impl in self._impls:
            module._compiled_call_impl = impl if compiled else None

    @property
    def compiled(self) -> bool:
        return bool(self._impls) and all(m._compiled_call_impl is impl for m, impl in self._impls)


def offload_managers(pipeline) -> dict[str, list]:
    """The enabled LayerwiseOffloadManagers of each DiT component, keyed by component name."""
    found: dict[str, list] = {}
    modules = getattr(pipeline, "modules", {}) or {}
    for name, module in modules.items():
        managers = [m for m in (getattr(module, "layerwise_offload_managers", None) or []) if m.enabled]
        if managers and name.startswith("transformer"):
            found[name] = managers
    return found


def manager_setting(manager) -> dict[str, Any]:
    return {
        "prefetch_layers": int(manager.prefetch_size),
        "resident_layers": int(manager.resident_layers),
        "policy": str(manager.residency_policy),
        "num_layers": int(manager.num_layers),
    }


def managers_live_blocker(managers: dict[str, list]) -> str | None:
    """Why these live managers' placement cannot change between forward passes (None: it can)."""
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    lifetimes = {str(getattr(m, "residency_lifetime", lo.RESIDENCY_LIFETIME_FORWARD))
                 for group in managers.values() for m in group}
    others = sorted(lifetimes - {lo.RESIDENCY_LIFETIME_FORWARD})
    if others:
        return (f"--dit-layerwise-residency-lifetime {', '.join(others)} keeps resident layers on the GPU "
                f"without a host copy, so they cannot move live")
    return None


def set_manager_placement(manager, *, prefetch_layers: int, resident_layers: int, policy: str) -> None:
    """Change a live manager's prefetch depth and resident set, between forward passes.

    Prefetch depth is read live by sglang's pre-hooks. The resident set under the default
    `forward` lifetime is re-pinned by the layer-0 pre-hook of every forward from the manager's
    `_resident_set`, with every layer's host copy kept, so changing it needs: drain and release
    what is on the device, swap the sets, and let the next forward pin the new set.
    """
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    if manager.residency_lifetime != lo.RESIDENCY_LIFETIME_FORWARD:
        raise RuntimeError("live residency changes need --dit-layerwise-residency-lifetime forward")
    resident = min(max(0, int(resident_layers)), manager.num_layers)
    manager.release_all()
    manager.prefetch_size = min(max(1, int(prefetch_layers)), manager.num_layers)
    manager.resident_layers = resident
    manager.residency_policy = policy
    manager._streamed_order = streamed_layers(manager.num_layers, resident, policy)
    manager._resident_set = frozenset(range(manager.num_layers)) - set(manager._streamed_order)
    # The next forward starts from layer 0: stream its head now, as sglang does after a request.
    manager.prepare_for_next_req(non_blocking=True)


def manager_layer_list_name(manager) -> str:
    return str(manager.layers_attr_str)


def manager_layer_modules(manager) -> list:
    return list(dict(manager.model.named_modules())[manager.layers_attr_str])


def wrap_layer_pre_hooks(manager, layers: list, make_wrapper: Callable) -> Callable[[], None]:
    """Put `make_wrapper(i, sglang_hook)` in the place of the forward pre-hook sglang's manager
    registered on layer i (found through the handles it keeps in `_forward_hooks`), so that what
    runs around sglang's hook costs torch no extra hook dispatch. A layer without one gets the
    wrapper as a hook of its own (`make_wrapper(i, None)`). Returns the undo: it puts sglang's
    hooks back (where sglang has not removed them meanwhile) and removes hooks of our own."""
    pre_hook_ids: dict[int, tuple[dict, int]] = {}
    for handle in getattr(manager, "_forward_hooks", None) or ():
        hooks = handle.hooks_dict_ref()
        if hooks is not None:
            pre_hook_ids[id(hooks)] = (hooks, handle.id)
    undo: list[Callable[[], None]] = []
    for i, layer in enumerate(layers):
        hooks, hook_id = pre_hook_ids.get(id(layer._forward_pre_hooks), (None, None))
        sglang_hook = hooks.get(hook_id) if hooks is not None else None
        if sglang_hook is None:
            undo.append(layer.register_forward_pre_hook(make_wrapper(i, None)).remove)
            continue
        wrapper = make_wrapper(i, sglang_hook)
        hooks[hook_id] = wrapper

        def put_back(hooks=hooks, hook_id=hook_id, sglang_hook=sglang_hook, wrapper=wrapper):
            if hooks.get(hook_id) is wrapper:
                hooks[hook_id] = sglang_hook

        undo.append(put_back)

    def undo_all() -> None:
        for step in undo:
            step()

    return undo_all


def wrap_manager_prefetch(manager, make_wrapper: Callable) -> bool:
    """Route this manager's `prefetch_layer(i, ...)` through `make_wrapper(original)` (called as
    wrapper(i, ...); `original` is called as original(manager, i, ...)) until
    `unwrap_manager_prefetch`. sglang's hooks call `self.prefetch_layer`, so an instance
    attribute shadows the method for this manager alone; the class is never patched. Wrappers
    stack: `original` is the wrapper already there (the compressed store's, under the monitor's),
    else the class's method; unwrapping puts that one back. False (and nothing done) for a manager
    without the method."""
    below = manager.__dict__.get("prefetch_layer")
    original = getattr(type(manager), "prefetch_layer", None)
    if original is None:
        return False
    if below is not None:
        def original(_manager, *args, **kwargs):
            return below(*args, **kwargs)
    wrapper = make_wrapper(original)
    wrapper.autoperf_below = below
    manager.prefetch_layer = wrapper
    return True


def unwrap_manager_prefetch(manager) -> None:
    wrapper = manager.__dict__.pop("prefetch_layer", None)
    below = getattr(wrapper, "autoperf_below", None)
    if below is not None:
        manager.prefetch_layer = below


def manager_prefetch_events(manager) -> dict:
    """layer -> the event sglang recorded on the copy stream after that layer's copies (its
    pre-hook waits for it). A new entry for a layer means prefetch_layer issued a copy. The dict
    is cleared, never replaced, so a reference taken once stays valid. Empty for a manager that
    never copies (no such dict)."""
    return getattr(manager, "_prefetch_events", {})


def manager_copy_stream(manager):
    return getattr(manager, "copy_stream", None)


def manager_layer_bytes(manager, layer_idx: int) -> int:
    total = 0
    for meta in manager._weight_metadata.get(layer_idx, {}).values():
        numel = meta.get("numel")
        if numel is None:
            numel = 1
            for d in meta.get("shape", ()):
                numel *= int(d)
        total += int(numel) * meta["dtype"].itemsize
    return total


def request_shape(ctx, batch) -> dict[str, Any]:
    """Shape and kind of the request a denoising loop serves (DenoisingContext and Req fields)."""

    def first(value):
        return value[0] if isinstance(value, (list, tuple)) and value else value

    return {
        "is_warmup": bool(getattr(ctx, "is_warmup", False)),
        "steps": int(getattr(ctx, "num_inference_steps", 0) or 0),
        "width": int(first(getattr(batch, "width", 0)) or 0),
        "height": int(first(getattr(batch, "height", 0)) or 0),
        "num_frames": int(first(getattr(batch, "num_frames", 1)) or 1),
        "batch_size": int(getattr(batch, "batch_size", 1) or 1),
        "cfg": bool(getattr(batch, "do_classifier_free_guidance", False)),
    }


def worker_rank(worker) -> int:
    return int(getattr(worker, "rank", 0) or 0)


def layout_text(*, tp: int, ulysses: int, ring: int, cfg: int, dp: int) -> str:
    """The parallel layout as a tuning key holds it."""
    return f"tp{tp}-ulysses{ulysses}-ring{ring}-cfg{cfg}-dp{dp}"


def installed_versions() -> dict[str, str]:
    """sglang's and torch's versions as the installed packages declare them (no import of either:
    the dry-run CLI reads them too)."""
    from importlib import metadata

    return {"sglang_version": metadata.version("sglang"), "torch_version": metadata.version("torch")}


def worker_identity(args, rank: int = 0) -> dict[str, Any]:
    """What of ServerArgs keys a tuning result (layout, LoRA, versions, pinned placement flags),
    in main or worker: the same ServerArgs give the same identity but for `rank`."""
    lora = getattr(args, "lora_path", None)
    explicit = explicit_flags(args)
    return {
        "rank": rank,
        "num_gpus": int(args.num_gpus or 1),
        "layout": layout_text(tp=args.tp_size, ulysses=args.ulysses_degree, ring=args.ring_degree,
                              cfg=args.cfg_parallel_degree or 1, dp=args.dp_size),
        "lora": tuple(sorted([lora] if isinstance(lora, str) else (lora or []))),
        **installed_versions(),
        "performance_mode": str(args.performance_mode),
        "pinned": sorted(explicit),
        "pinned_placement": _pinned_placement_text(args, explicit),
    }


def dry_run_identity(num_gpus: int, performance_mode: str) -> dict[str, Any] | None:
    """worker_identity of a run started with no flags but these, without building sglang's
    ServerArgs (~20 s of imports): what `sglang-autoperf plan` looks the tuning cache up with.
    Only on one GPU, where sglang derives no layout; on several, its derivation after the plan
    (e.g. 2 GPUs with CFG-parallel off run Ulysses 2) is sglang's alone: None."""
    if int(num_gpus) != 1:
        return None
    return {
        "rank": 0, "num_gpus": 1, "layout": layout_text(tp=1, ulysses=1, ring=1, cfg=1, dp=1),
        "lora": (), **installed_versions(), "performance_mode": str(performance_mode),
        "pinned": [], "pinned_placement": "",
    }


def worker_pipeline(worker):
    return worker.pipeline


# -- a layer's host store held compressed (issue 18) ----------------------------------------------
# sglang 0.5.23's LayerwiseOffloadManager keeps an offloaded layer's contiguous weights as one flat
# host buffer per dtype (`_consolidated_cpu_weights[layer][dtype]`), each weight's slice in
# `_weight_metadata[layer][name]` (offset, numel, shape); its prefetch_layer copies each buffer into
# a new device buffer on `copy_stream`, points the parameters at slices of it, records the event
# the layer's pre-hook waits on (`_prefetch_events`) and marks the layer in `_gpu_layers`. The
# compressed store keeps a bf16 buffer as encoded bytes instead; `prefetch_layer_filling` is that
# same prefetch with some dtypes' device buffers written by a decoder rather than copied.
STREAMING_MANAGER_FIELDS = ("_consolidated_cpu_weights", "_weight_metadata", "_gpu_layers", "_prefetch_events",
                            "copy_stream", "device", "get_target_with_name", "_wrap_for_target")
# The manager's methods that read or write the flat host buffers (weight updates, checksums,
# disable_offload's write-back, the residency report, dropping the stores): a compressed store
# must put the raw buffers back before any of them runs.
HOST_STORE_METHODS = ("get_cpu_weight", "iter_cpu_weights", "sync_layer_to_cpu", "sync_all_layers_to_cpu",
                      "update_cpu_weights", "release_host_stores")


def _offload_module():
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    return lo


def manager_flat_host_buffers(manager, dtype) -> dict[int, Any]:
    """layer -> its flat host buffer of `dtype`, for the layers whose weights all live in flat
    buffers (none left on the checkpoint mapping, none stride-preserving) on a manager that copies
    on a stream: the layers `prefetch_layer_filling` can bring in. Empty for any other manager."""
    if not manager.enabled or getattr(manager, "copy_stream", None) is None or manager._has_dtensor_weights:
        return {}
    found = {}
    for layer, buffers in manager._consolidated_cpu_weights.items():
        metas = manager._weight_metadata.get(layer, {}).values()
        if dtype in buffers and metas and not any(m.get("mapped") or m.get("preserve_strides") for m in metas):
            found[layer] = buffers[dtype]
    return found


def set_manager_flat_host_buffer(manager, layer_idx: int, dtype, buffer) -> None:
    """Put a layer's flat host buffer of `dtype` in place (None: take it out, the store holds it)."""
    buffers = manager._consolidated_cpu_weights[layer_idx]
    if buffer is None:
        buffers.pop(dtype, None)
    else:
        buffers[dtype] = buffer


def manager_layer_needs_copy(manager, layer_idx: int) -> bool:
    """Whether prefetch_layer(layer_idx) would bring the layer in (it is not on the device yet)."""
    return bool(manager.enabled) and 0 <= layer_idx < manager.num_layers and layer_idx not in manager._gpu_layers


def prefetch_layer_filling(manager, layer_idx: int, non_blocking: bool, fills: dict[Any, Callable[[], Any]]) -> None:
    """sglang's prefetch_layer for a layer of `manager_flat_host_buffers` (see the section above),
    where `fills[dtype]()` returns the device buffer of that dtype, written on the copy stream
    (the decoder), and every other dtype's host buffer is copied as sglang copies it."""
    import torch

    lo = _offload_module()
    device_module = lo.torch.get_device_module()
    lo.finish_offload_writeback()
    manager.copy_stream.wait_stream(device_module.current_stream())
    buffers = {}
    with torch.inference_mode(False), torch.no_grad(), device_module.stream(manager.copy_stream):
        for dtype, host in manager._consolidated_cpu_weights[layer_idx].items():
            if dtype not in fills:
                buffers[dtype] = torch.empty(host.shape, dtype=dtype, device=manager.device)
                buffers[dtype].copy_(host, non_blocking=non_blocking)
        for dtype, fill in fills.items():
            buffers[dtype] = fill()
        for name, meta in manager._weight_metadata[layer_idx].items():
            target = manager.get_target_with_name(name)
            view = buffers[meta["dtype"]][meta["offset"]:meta["offset"] + meta["numel"]].view(meta["shape"])
            target.data = manager._wrap_for_target(target, view)
    event = device_module.Event()
    event.record(manager.copy_stream)
    manager._prefetch_events[layer_idx] = event
    if not non_blocking:
        event.synchronize()
    manager._gpu_layers.add(layer_idx)


def manager_device(manager):
    return manager.device


def pinned_host_buffer(numel: int, dtype):
    """A pinned host tensor of exactly `numel` elements, allocated the way sglang's manager pins its
    own layer buffers (its `_pinned_empty`: mmap + cudaHostRegister above a size, torch's pool
    below). torch's pinned pool alone rounds every block up to a power of two: a 203 MiB packed
    FLUX.1 single block would pin 256 MiB."""
    return _offload_module()._pinned_empty(int(numel), dtype=dtype)


def guard_host_store_methods(manager, before: Callable[[], None]) -> Callable[[], None]:
    """Call `before()` ahead of each of HOST_STORE_METHODS on this manager (instance attributes, the
    class untouched). Returns the undo."""
    for name in HOST_STORE_METHODS:
        method = getattr(type(manager), name, None)
        if method is None:
            continue

        def guarded(*args, _method=method, **kwargs):
            before()
            return _method(manager, *args, **kwargs)

        manager.__dict__[name] = guarded

    def undo() -> None:
        for name in HOST_STORE_METHODS:
            manager.__dict__.pop(name, None)

    return undo



def streaming_problems() -> list[str]:
    """What of the compressed store's contract (the section above) the installed sglang breaks:
    the fields and methods it uses, read from the manager's source (they are set past the
    `enabled` check, so a manager built on a machine without a GPU has none of them)."""
    import inspect

    lo = _offload_module()
    cls = lo.LayerwiseOffloadManager
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError) as exc:
        return [f"LayerwiseOffloadManager's source cannot be read ({type(exc).__name__})"]
    problems = [f"LayerwiseOffloadManager never sets {name}" for name in STREAMING_MANAGER_FIELDS
                if f"self.{name}" not in source and not callable(getattr(cls, name, None))]
    problems += [f"LayerwiseOffloadManager has no method {name}" for name in HOST_STORE_METHODS
                 if not callable(getattr(cls, name, None))]
    problems += [f"layerwise offload has no {name}" for name in ("finish_offload_writeback", "_pinned_empty")
                 if not callable(getattr(lo, name, None))]
    return problems
