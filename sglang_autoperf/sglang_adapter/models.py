"""sglang's model knowledge, read from sglang's own registry and classes (floor 0).

Which pipeline, pipeline config and sampling class sglang picks for a model folder, whether it runs
it natively or through its diffusers backend (no layerwise offload there), the DiT class a
component's config names, the module lists that class streams (`layer_names`, in execution order),
how checkpoint names map onto the class's names, run-time precisions and sampling defaults.
Nothing here is a hand table: every answer comes from the installed sglang, so a new sglang
release brings its new families with it. tests/test_sglang_models.py checks this against sglang.
"""
from __future__ import annotations

import ast
import inspect
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

# sglang's get_model_info sends model paths with these markers to its diffusers backend
# (registry.py: "native sglang-diffusion engine currently only supports BF16/FP16").
QUANTIZED_PATH_MARKERS = ("-4bit", "-awq", "-gptq")

# Our task words for sglang's ModelTaskType members (configs/task_type.py).
TASK_NAMES = {
    "T2V": "text-to-video", "I2V": "image-to-video", "TI2V": "text-image-to-video",
    "T2I": "text-to-image", "I2I": "image-to-image", "TI2I": "image-edit", "I2M": "image-to-mesh",
    "V2V": "video-to-video", "F2V": "video-prefix-to-video", "VLA_ACTION": "action",
}
# Family names the cost model, the planner and cached tunings already use, where they differ from
# the module that holds sglang's pipeline config (configs/pipeline_configs/hunyuan.py).
_FAMILY_RENAMES = {"hunyuan": "hunyuan_video"}
# Components sglang's transformer loader builds as a DiT (transformer_loader.py: component types
# transformer / video_dit; a second expert is "transformer_2").
DIT_COMPONENTS = ("transformer", "transformer_2")


class SglangModelError(ValueError):
    """sglang cannot tell what a folder is, or the installed sglang lacks what we read; one line."""


@dataclass(frozen=True)
class SglangModel:
    """What sglang resolves a model folder to."""
    pipeline_class: str  # the pipeline sglang builds (model_index.json _class_name or a known name)
    native: bool  # False: sglang runs it with its diffusers backend, where there is no layerwise offload
    backend_reason: str  # one line saying why it is not native; "" when native
    family: str = ""  # the module of sglang's pipeline config, e.g. "wan", "flux", "zimage"
    task: str = ""
    pipeline_config_class: str = ""
    sampling_class: str = ""
    dit_precision: str = "bf16"
    vae_precision: str = "fp32"
    text_encoder_precisions: tuple[str, ...] = ("fp32",)
    image_encoder_precision: str = "fp32"
    default_steps: int = 50
    default_guidance_scale: float | None = None
    cfg_default: bool = False  # sglang's defaults run a second (negative) pass
    guidance_is_cfg: bool = False  # a guidance scale > 1 runs that pass (a default negative prompt exists)
    text_tokens: int = 512  # the longest text encoder's text_len
    pipeline_config: Any = field(default=None, compare=False, repr=False)  # sglang's instance


@dataclass(frozen=True)
class DitLayout:
    """The DiT class a component's config names, what it streams and how checkpoint names map."""
    class_name: str  # sglang's class (after its aliases and the pipeline's override)
    layer_names: tuple[str, ...]  # module lists sglang's layerwise offload streams, in execution order
    to_sglang_name: Callable[[str], str]  # checkpoint tensor name -> the class's parameter name
    arch_geometry: dict = field(default_factory=dict)  # sglang's arch config: width, heads, input channels


def _registry():
    # sglang's import warns that AWQ/GGUF kernels need CUDA (sglang/srt/layers/quantization): nothing
    # to do with reading its registry, and the CLI's error is one line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sglang.multimodal_gen import registry
    return registry


def _diffusers_backend(pipeline_class: str, why: str) -> SglangModel:
    return SglangModel(pipeline_class=pipeline_class, native=False,
                       backend_reason=f"sglang runs {pipeline_class} with its diffusers backend ({why}), which has "
                                      "no layerwise offload to plan")


def _config_info(registry, path: str, pipeline_class: str, model_id: str | None):
    """sglang's _get_config_info; for a folder its model-index check refuses (a config-only folder without
    tokenizers), the same detectors on the class name that model_index.json gives."""
    try:
        return registry._get_config_info(path, model_id=model_id)
    except (ValueError, OSError):
        probes = (path.lower(), pipeline_class.lower())
        for config_id, detector in registry._MODEL_NAME_DETECTORS:
            if any(detector(p) for p in probes):
                return registry._CONFIG_REGISTRY.get(config_id)
        return None


def resolve_model(path: str, index_class: str, model_id: str | None = None,
                  backend: str | None = None) -> SglangModel:
    """What sglang's get_model_info picks for `path` (model_index.json names `index_class`), without
    its download or its check that every component folder exists (the probe reads files only)."""
    if backend is not None and str(getattr(backend, "value", backend)).lower() == "diffusers":
        return _diffusers_backend(index_class, "--backend diffusers")
    if any(q in path.lower() for q in QUANTIZED_PATH_MARKERS):
        return _diffusers_backend(index_class, "a quantized name: " + "/".join(QUANTIZED_PATH_MARKERS))
    registry = _registry()
    pipeline_class = registry.get_non_diffusers_pipeline_name(path) or index_class
    if registry.get_pipeline_class(pipeline_class) is None:
        return _diffusers_backend(pipeline_class, "no native pipeline of that name")
    info = _config_info(registry, path, pipeline_class, model_id)
    if info is None:
        return _diffusers_backend(pipeline_class, "no registered model id or detector matches the folder")
    try:
        config, sampling = info.pipeline_config_cls(), info.sampling_param_cls()
    except Exception as e:  # a config class of sglang's that cannot be built with its defaults
        raise SglangModelError(f"sglang's {info.pipeline_config_cls.__name__} / {info.sampling_param_cls.__name__} "
                               f"cannot be built ({type(e).__name__}: {' '.join(str(e).split())})") from None
    return _native_model(pipeline_class, config, sampling)


# Where a sampling class leaves num_inference_steps to its pipeline (None: FLUX.3 image/action), the
# probe plans for ModelProfile's nominal 50 steps.
NOMINAL_STEPS = 50


def _native_model(pipeline_class: str, config, sampling) -> SglangModel:
    module = type(config).__module__.rsplit(".", 1)[-1]
    true_cfg, guidance = getattr(sampling, "true_cfg_scale", None), getattr(sampling, "guidance_scale", None)
    cfg_scale = true_cfg if true_cfg is not None else guidance
    steps = getattr(sampling, "num_inference_steps", None)
    uses_cfg = getattr(sampling, "should_use_classifier_free_guidance", lambda: False)
    text_lens = [getattr(e.arch_config, "text_len", None) for e in config.text_encoder_configs]
    text_lens = [n for n in text_lens if isinstance(n, int) and n > 0]
    return SglangModel(
        pipeline_class=pipeline_class, native=True, backend_reason="",
        family=_FAMILY_RENAMES.get(module, module),
        task=TASK_NAMES.get(config.task_type.name, config.task_type.name.lower()),
        pipeline_config_class=type(config).__name__, sampling_class=type(sampling).__name__,
        dit_precision=config.dit_precision, vae_precision=config.vae_precision,
        text_encoder_precisions=tuple(config.text_encoder_precisions),
        image_encoder_precision=config.image_encoder_precision,
        default_steps=steps if isinstance(steps, int) and steps > 0 else NOMINAL_STEPS,
        default_guidance_scale=cfg_scale, cfg_default=bool(uses_cfg()),
        guidance_is_cfg=getattr(sampling, "negative_prompt", None) is not None,
        text_tokens=max(text_lens, default=512), pipeline_config=config)


def dit_layout(model: SglangModel, component: str, config: dict) -> DitLayout:
    """The DiT class sglang's transformer loader builds from `config` (a component's config.json):
    its registered class, the lists it streams and its checkpoint-name mapping."""
    from sglang.multimodal_gen.runtime.loader.utils import get_param_names_mapping
    from sglang.multimodal_gen.runtime.models.registry import ModelRegistry

    class_name = model.pipeline_config.transformer_class_override or config.get("_class_name")
    try:
        cls, _ = ModelRegistry.resolve_model_cls(str(class_name))
    except Exception as e:  # sglang raises a bare Exception for an unknown architecture
        raise SglangModelError(f"{component}: sglang has no DiT class {class_name!r} "
                               f"({type(e).__name__})") from None
    dit_config = model.pipeline_config.dit_config
    dit_config.update_model_arch({k: v for k, v in config.items() if k != "_class_name"})
    arch = dit_config.arch_config
    mapping = get_param_names_mapping(dict(arch.param_names_mapping))
    return DitLayout(class_name=cls.__name__, layer_names=declared_layer_names(cls),
                     to_sglang_name=lambda name: mapping(name)[0],
                     arch_geometry=_arch_geometry(arch))


def _positive(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _arch_geometry(arch) -> dict:
    """Width, heads and input channels from sglang's arch config. Where a family names no
    in_channels (MOSS-Image: latent_channels; MiniMax-H3: latents_dim), the base DiTArchConfig's
    num_channels_latents, which each family's __post_init__ sets to the latent channels its DiT takes."""
    geometry = {k: getattr(arch, k, None) for k in ("hidden_size", "num_attention_heads", "in_channels")}
    if not _positive(geometry["in_channels"]):
        geometry["in_channels"] = getattr(arch, "num_channels_latents", None)
    return {k: v for k, v in geometry.items() if _positive(v)}


def declared_layer_names(cls) -> tuple[str, ...]:
    """The module lists `cls` declares for sglang's layerwise offload: a class attribute, or
    `self.layer_names = [...]` in its (or a base class's) __init__. () when it declares none, or
    computes them from the built module (then sglang streams what only a built model knows)."""
    for klass in cls.__mro__:
        own = klass.__dict__.get("layer_names")
        if isinstance(own, (list, tuple)) and own:
            return tuple(own)
        init = klass.__dict__.get("__init__")
        found = _init_layer_names(init) if init is not None else None
        if found is not None:
            return found
    return ()


def _init_layer_names(init) -> tuple[str, ...] | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return None
    module = inspect.getmodule(init)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "layer_names" and isinstance(t.value, ast.Name)
                and t.value.id == "self" for t in node.targets)):
            continue
        if isinstance(node.value, ast.Name):  # a module constant, e.g. list(_BLOCK_CONTAINERS)
            value = getattr(module, node.value.id, None)
        elif (isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
              and node.value.func.id in ("list", "tuple") and len(node.value.args) == 1
              and isinstance(node.value.args[0], ast.Name)):
            value = getattr(module, node.value.args[0].id, None)
        else:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return ()  # computed at construction: nothing a file-only reader can know
        return tuple(value) if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) else ()
    return None


def layer_index_pattern(layer_name: str) -> re.Pattern:
    """`{layer_name}.{i}.` at the start of a parameter name, as sglang's layerwise offload groups them."""
    return re.compile(rf"^{re.escape(layer_name)}\.(\d+)\.")


def dit_classes() -> dict[str, str]:
    """Every DiT class in sglang's model registry: class name -> its module under runtime/models/dits."""
    from sglang.multimodal_gen.runtime.models import registry as models
    return {arch: module for arch, (component, module, _) in models._SGLANG_DIFFUSION_MODELS.items()
            if component == "dits"}


def dit_class(name: str):
    """sglang's DiT class registered as `name`."""
    from sglang.multimodal_gen.runtime.models.registry import ModelRegistry
    return ModelRegistry.resolve_model_cls(name)[0]
