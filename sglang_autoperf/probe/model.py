"""ModelProfile: what a diffusers-layout model folder asks of the GPU, read from its files alone.

Reads model_index.json, each component's config and safetensors *headers* (never tensor data).
Bytes are run-time bytes: the dtype sglang will load the component in, not the dtype on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path


class ModelProbeError(ValueError):
    """A model folder that cannot be profiled; the message names the file and what was expected."""


@dataclass(frozen=True)
class BlockGroup:
    name: str  # module list name in the checkpoint, e.g. "transformer_blocks", "single_transformer_blocks"
    count: int
    block_bytes: tuple[int, ...]  # run-time bytes of each block, in order
    block_params: tuple[int, ...]


@dataclass(frozen=True)
class DitProfile:
    component: str  # "transformer", "transformer_2"
    class_name: str
    dtype: str  # run-time dtype, e.g. "bfloat16"
    block_groups: tuple[BlockGroup, ...]  # in execution order
    layer_bytes: tuple[int, ...]  # every block of every group, in execution order
    layer_params: tuple[int, ...]
    non_block_bytes: int
    total_bytes: int
    hidden_size: int
    num_heads: int
    head_dim: int
    patch_size: tuple[int, ...]  # (t, h, w) for video, (h, w) for image
    in_channels: int

    @property
    def num_layers(self) -> int:
        return len(self.layer_bytes)


@dataclass(frozen=True)
class ComponentProfile:
    name: str
    library: str  # "diffusers", "transformers"
    class_name: str
    params: int
    dtype: str  # run-time dtype
    bytes: int
    source: str = "weights"  # "weights" (safetensors headers) or "config" (built on the meta device)


@dataclass(frozen=True)
class ModelProfile:
    path: str
    pipeline_class: str
    family: str  # "wan", "flux", "qwen_image", "hunyuan_video", ...
    task: str  # "text-to-image", "text-to-video", "image-to-video", "image-edit", ...
    components: dict[str, ComponentProfile]
    dit: DitProfile | None  # the first (or only) expert
    dits: dict[str, DitProfile]  # every DiT, keyed by component name (two for Wan2.2-A14B)
    cfg_default: bool  # whether sglang's sampling defaults for this pipeline run classifier-free guidance
    default_guidance_scale: float | None
    vae_spatial_compression: int
    vae_temporal_compression: int  # 1 for image models
    latent_channels: int
    fingerprint: str  # changes when configs or tensor shapes change, not otherwise
    default_steps: int = 50  # sglang's num_inference_steps default for this model
    text_tokens: int = 512  # encoder tokens the DiT attends to (cross or joint attention)

    @property
    def is_video(self) -> bool:
        return "video" in self.task


# ---------------------------------------------------------------------------------------------
# Static knowledge of sglang 0.5.23
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Precisions:
    dit: str
    vae: str
    text_encoders: tuple[str, ...]
    image_encoder: str = "fp32"


# Run-time precision per family, from sglang 0.5.23
# sglang/multimodal_gen/configs/pipeline_configs/{base,wan,flux,qwen_image,hunyuan}.py
# (PipelineConfig.dit_precision defaults to "bf16" in base.py; the loader uses vae_precision,
# not vae_decode_precision, when it builds the VAE: runtime/utils/precision.py).
_PRECISIONS: dict[str, _Precisions] = {
    "wan": _Precisions(dit="bf16", vae="fp32", text_encoders=("fp32",), image_encoder="fp32"),
    "flux": _Precisions(dit="bf16", vae="bf16", text_encoders=("bf16", "bf16")),
    "qwen_image": _Precisions(dit="bf16", vae="bf16", text_encoders=("bf16",)),
    "hunyuan_video": _Precisions(dit="bf16", vae="fp16", text_encoders=("fp16", "fp16")),
}

# pipeline class -> (family, task)
_PIPELINES: dict[str, tuple[str, str]] = {
    "WanPipeline": ("wan", "text-to-video"),
    "WanImageToVideoPipeline": ("wan", "image-to-video"),
    "FluxPipeline": ("flux", "text-to-image"),
    "QwenImagePipeline": ("qwen_image", "text-to-image"),
    "QwenImageEditPipeline": ("qwen_image", "image-edit"),
    "QwenImageEditPlusPipeline": ("qwen_image", "image-edit"),
    "HunyuanVideoPipeline": ("hunyuan_video", "text-to-video"),
}


@dataclass(frozen=True)
class SamplingDefaults:
    guidance_scale: float
    steps: int
    has_negative_prompt: bool  # sglang runs CFG only when guidance > 1 AND a negative prompt is set


# Field defaults of sglang 0.5.23's SamplingParams subclasses, keyed by class name
# (sglang/multimodal_gen/configs/sample/{wan,flux,qwenimage,hunyuan}.py). Checked against the
# live classes by tests/test_probe_model.py when sglang is importable.
SAMPLING_DEFAULTS: dict[str, SamplingDefaults] = {
    "WanT2V_1_3B_SamplingParams": SamplingDefaults(3.0, 50, True),
    "WanT2V_14B_SamplingParams": SamplingDefaults(5.0, 50, True),
    "WanI2V_14B_480P_SamplingParam": SamplingDefaults(5.0, 50, True),
    "WanI2V_14B_720P_SamplingParam": SamplingDefaults(5.0, 50, True),
    "Wan2_2_TI2V_5B_SamplingParam": SamplingDefaults(5.0, 50, True),
    "Wan2_2_T2V_A14B_SamplingParam": SamplingDefaults(4.0, 40, True),
    "Wan2_2_I2V_A14B_SamplingParam": SamplingDefaults(3.5, 40, True),
    "FluxSamplingParams": SamplingDefaults(3.5, 50, False),
    "QwenImageSamplingParams": SamplingDefaults(4.0, 50, True),
    "QwenImageEditPlusSamplingParams": SamplingDefaults(4.0, 40, True),
    "HunyuanSamplingParams": SamplingDefaults(1.0, 50, True),
}

# How sglang picks the sampling class (registry._get_config_info): a registered model id whose
# short name occurs in the folder name wins (longest first); else the pipeline's detector.
# From register() in sglang/multimodal_gen/configs/pipeline_configs/{wan,flux,qwen_image,hunyuan}.py.
_MODEL_ID_SAMPLING: dict[str, str] = {
    "Wan2.1-T2V-1.3B-Diffusers": "WanT2V_1_3B_SamplingParams",
    "Wan2.1-T2V-14B-Diffusers": "WanT2V_14B_SamplingParams",
    "Wan2.1-I2V-14B-480P-Diffusers": "WanI2V_14B_480P_SamplingParam",
    "Wan2.1-I2V-14B-720P-Diffusers": "WanI2V_14B_720P_SamplingParam",
    "Wan2.2-TI2V-5B-Diffusers": "Wan2_2_TI2V_5B_SamplingParam",
    "Wan2.2-T2V-A14B-Diffusers": "Wan2_2_T2V_A14B_SamplingParam",
    "Wan2.2-I2V-A14B-Diffusers": "Wan2_2_I2V_A14B_SamplingParam",
    "FLUX.1-dev": "FluxSamplingParams",
    "Qwen-Image": "QwenImageSamplingParams",
    "Qwen-Image-Edit": "QwenImageSamplingParams",
    "Qwen-Image-Edit-2509": "QwenImageEditPlusSamplingParams",
    "Qwen-Image-Edit-2511": "QwenImageEditPlusSamplingParams",
    "HunyuanVideo": "HunyuanSamplingParams",
}
_PIPELINE_SAMPLING: dict[str, str] = {
    "WanPipeline": "WanT2V_1_3B_SamplingParams",  # sglang's "wanpipeline" detector
    "WanImageToVideoPipeline": "WanI2V_14B_480P_SamplingParam",
    "FluxPipeline": "FluxSamplingParams",
    "QwenImagePipeline": "QwenImageSamplingParams",
    "QwenImageEditPipeline": "QwenImageSamplingParams",
    "QwenImageEditPlusPipeline": "QwenImageEditPlusSamplingParams",
    "HunyuanVideoPipeline": "HunyuanSamplingParams",
}

# Families whose guidance_scale is true CFG (a second, negative pass); FLUX.1-dev and
# HunyuanVideo embed guidance in the DiT (pipeline_configs: embedded_cfg_scale).
TRUE_CFG_FAMILIES = frozenset({"wan", "qwen_image"})

# Encoder tokens the DiT attends to. Wan: T5 text_len 512 (configs/models/dits/wanvideo.py);
# FLUX: T5 max_length 512 (pipeline_configs/flux.py); HunyuanVideo: Llama text_len 256
# (configs/models/encoders/llama.py); Qwen-Image pads nothing, so it is prompt-dependent: a
# nominal prompt length.
TEXT_TOKENS: dict[str, int] = {"wan": 512, "flux": 512, "hunyuan_video": 256, "qwen_image": 256}

# Block lists in execution order: double-stream before single-stream. Lists not named here
# run after the named ones, in name order.
_EXECUTION_ORDER: dict[str, tuple[str, ...]] = {
    "wan": ("blocks",),
    "flux": ("transformer_blocks", "single_transformer_blocks"),
    "qwen_image": ("transformer_blocks",),
    "hunyuan_video": ("transformer_blocks", "single_transformer_blocks"),
}
# Module lists that are part of the DiT but are not the repeated backbone (HunyuanVideo's token
# refiner sits inside context_embedder: "context_embedder.token_refiner.refiner_blocks.N").
_DIT_COMPONENTS = ("transformer", "transformer_2")

_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
    "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_PRECISION_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


# ---------------------------------------------------------------------------------------------
# File readers
# ---------------------------------------------------------------------------------------------

def _read_json(path: Path, expected: str) -> dict:
    if not path.is_file():
        raise ModelProbeError(f"{path}: missing; expected {expected}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelProbeError(f"{path}: not valid JSON ({e}); expected {expected}") from None
    if not isinstance(data, dict):
        raise ModelProbeError(f"{path}: top level is {type(data).__name__}; expected {expected}")
    return data


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a .safetensors file's header; never reads tensor data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise ModelProbeError(f"{path}: {size} bytes; expected an 8-byte safetensors header length")
            (n,) = struct.unpack("<Q", raw_len)
            if n == 0 or n > _MAX_HEADER or n > size - 8:
                raise ModelProbeError(
                    f"{path}: header length {n} does not fit the file ({size} bytes); "
                    "expected a safetensors file")
            raw = f.read(n)
    except OSError as e:
        raise ModelProbeError(f"{path}: cannot read ({e}); expected a safetensors file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelProbeError(f"{path}: safetensors header is not valid JSON ({e})") from None
    out: dict[str, TensorInfo] = {}
    data_len = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(meta["dtype"])
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelProbeError(
                f"{path}: safetensors header entry {name!r} lacks dtype/shape/data_offsets") from None
        if end > data_len or begin > end:
            raise ModelProbeError(
                f"{path}: tensor {name!r} ends at byte {end} of a {data_len}-byte data section; "
                "the file is truncated")
        out[name] = TensorInfo(dtype, shape)
    return out


def _weight_files(comp_dir: Path) -> list[Path]:
    """The safetensors files of one component; prefers the non-variant set (no .fp16. infix)."""
    indexes = sorted(comp_dir.glob("*.safetensors.index.json"))
    if indexes:
        plain = [p for p in indexes if p.name.count(".") == 3] or indexes
        index = plain[0]
        data = _read_json(index, "a sharded safetensors index with a 'weight_map'")
        wm = data.get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise ModelProbeError(f"{index}: no 'weight_map'; expected a sharded safetensors index")
        files = []
        for shard in sorted(set(wm.values())):
            p = comp_dir / shard
            if not p.is_file():
                raise ModelProbeError(f"{index}: names shard {shard}, which is missing")
            files.append(p)
        return files
    files = sorted(comp_dir.glob("*.safetensors"))
    plain = [p for p in files if p.name.count(".") == 1]
    return plain or files


def _tensors_from_weights(files: list[Path]) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for f in files:
        out.update(read_safetensors_header(f))
    return out


_TORCH_TO_ST = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
    "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


def _tensors_from_config(comp_dir: Path, library: str, class_name: str, config: dict) -> dict[str, TensorInfo]:
    """Shapes of a component built from its config on the meta device: no weights needed."""
    cfg_path = comp_dir / "config.json"
    config = {k: v for k, v in config.items() if k != "_source"}
    try:
        import torch
        if library == "diffusers":
            import diffusers
            cls = getattr(diffusers, class_name)
            build = lambda: cls.from_config(config)  # noqa: E731
        elif library == "transformers":
            import transformers
            cls = getattr(transformers, class_name)
            conf = cls.config_class.from_dict(config)
            build = lambda: cls(conf)  # noqa: E731
        else:
            raise ModelProbeError(f"{cfg_path}: library {library!r}; expected diffusers or transformers")
    except ModelProbeError:
        raise
    except (ImportError, AttributeError) as e:
        raise ModelProbeError(
            f"{cfg_path}: no weights and cannot build {library}.{class_name} from the config ({e})") from None
    try:
        with torch.device("meta"):
            module = build()
    except Exception:
        try:  # some constructors compute on real tensors; accelerate keeps buffers real
            from accelerate import init_empty_weights
            with init_empty_weights():
                module = build()
        except Exception as e:
            raise ModelProbeError(
                f"{cfg_path}: no weights and building {class_name} from it failed ({type(e).__name__}: {e})"
            ) from None
    out: dict[str, TensorInfo] = {}
    seen: set[int] = set()
    # state_dict is what save_pretrained writes; tied weights are saved once.
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = TensorInfo(_TORCH_TO_ST.get(str(t.dtype).replace("torch.", ""), "F32"), tuple(t.shape))
    return out


# ---------------------------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def _runtime_bytes(t: TensorInfo, precision: str) -> int:
    # floating tensors are cast to the run-time dtype; integer buffers keep theirs
    if t.dtype in _FLOAT_DTYPES:
        return t.numel * _PRECISION_BYTES[precision]
    return t.numel * _DTYPE_BYTES.get(t.dtype, 1)


def _block_lists(tensors: dict[str, TensorInfo]) -> dict[str, dict[int, list[str]]]:
    """Module lists at the top level of the DiT: prefix 'name.N.' with N = 0..count-1."""
    lists: dict[str, dict[int, list[str]]] = {}
    for name in tensors:
        m = _INDEXED.match(name)
        if not m or "." in m.group(1):
            continue  # only top-level lists (nested lists belong to their parent module)
        lists.setdefault(m.group(1), {}).setdefault(int(m.group(2)), []).append(name)
    # a repeated block list has consecutive indices from 0 and at least 2 entries
    return {k: v for k, v in lists.items() if len(v) >= 2 and sorted(v) == list(range(len(v)))}


def _tuple_int(x) -> tuple[int, ...]:
    if isinstance(x, (list, tuple)):
        return tuple(int(v) for v in x)
    return (int(x),)


def _dit_profile(component: str, class_name: str, family: str, config: dict,
                 tensors: dict[str, TensorInfo], latent_channels: int, is_video: bool) -> DitProfile:
    precision = _PRECISIONS[family].dit
    lists = _block_lists(tensors)
    order = _EXECUTION_ORDER.get(family, ())
    names = [n for n in order if n in lists] + sorted(n for n in lists if n not in order)
    groups = []
    in_blocks: set[str] = set()
    for gname in names:
        blocks = lists[gname]
        bb, bp = [], []
        for i in range(len(blocks)):
            bb.append(sum(_runtime_bytes(tensors[t], precision) for t in blocks[i]))
            bp.append(sum(tensors[t].numel for t in blocks[i]))
            in_blocks.update(blocks[i])
        groups.append(BlockGroup(gname, len(blocks), tuple(bb), tuple(bp)))
    total = sum(_runtime_bytes(t, precision) for t in tensors.values())
    layer_bytes = tuple(b for g in groups for b in g.block_bytes)
    layer_params = tuple(p for g in groups for p in g.block_params)

    heads = int(config.get("num_attention_heads") or config.get("num_heads") or 0)
    head_dim = int(config.get("attention_head_dim") or 0)
    hidden = int(config.get("hidden_size") or config.get("dim") or heads * head_dim)
    if not head_dim and heads:
        head_dim = hidden // heads
    in_channels = int(config.get("in_channels") or 0)
    patch = _tuple_int(config.get("patch_size", 1))
    # The token patch in latent pixels. FLUX packs 2x2 latents into 64 channels before a
    # patch_size=1 embedder; Qwen-Image packs the same way and states patch_size=2.
    if len(patch) == 1:
        p = patch[0]
        if p == 1 and latent_channels and in_channels == 4 * latent_channels:
            p = 2
        patch = (int(config.get("patch_size_t", 1)), p, p) if is_video else (p, p)
    return DitProfile(
        component=component, class_name=class_name, dtype=_PRECISION_NAMES[precision],
        block_groups=tuple(groups), layer_bytes=layer_bytes, layer_params=layer_params,
        non_block_bytes=total - sum(layer_bytes), total_bytes=total, hidden_size=hidden,
        num_heads=heads, head_dim=head_dim, patch_size=patch, in_channels=in_channels,
    )


def _vae_geometry(config: dict, is_video: bool) -> tuple[int, int, int]:
    """(spatial, temporal, latent channels) compression of a VAE config."""
    cls = config.get("_class_name", "")
    latent = int(config.get("z_dim") or config.get("latent_channels") or 0)
    if "scale_factor_spatial" in config or "spatial_compression_ratio" in config:
        spatial = int(config.get("scale_factor_spatial") or config.get("spatial_compression_ratio"))
    elif "dim_mult" in config:  # Wan / Qwen-Image causal VAE
        spatial = 2 ** (len(config["dim_mult"]) - 1)
    elif "block_out_channels" in config:
        spatial = 2 ** (len(config["block_out_channels"]) - 1)
    else:
        raise ModelProbeError(f"vae config ({cls}): cannot tell its spatial compression")
    if "scale_factor_temporal" in config or "temporal_compression_ratio" in config:
        temporal = int(config.get("scale_factor_temporal") or config.get("temporal_compression_ratio"))
    elif "temperal_downsample" in config:
        temporal = 2 ** sum(bool(x) for x in config["temperal_downsample"])
    else:
        temporal = 1
    return spatial, (temporal if is_video else 1), latent


# ---------------------------------------------------------------------------------------------
# probe_model
# ---------------------------------------------------------------------------------------------

def _norm(obj):
    """Configs without bookkeeping keys that don't change the model (versions, paths, labels)."""
    if isinstance(obj, dict):
        return {k: _norm(v) for k, v in sorted(obj.items())
                if k not in ("_diffusers_version", "_name_or_path", "transformers_version", "_source",
                             "_commit_hash")}
    if isinstance(obj, (list, tuple)):
        return [_norm(v) for v in obj]
    return obj


def _sampling_class(root: Path, pipeline_class: str) -> str:
    name = root.name.lower()
    for model_id in sorted(_MODEL_ID_SAMPLING, key=len, reverse=True):
        if model_id.lower() in name:
            return _MODEL_ID_SAMPLING[model_id]
    return _PIPELINE_SAMPLING[pipeline_class]


def probe_model(path: str | os.PathLike) -> ModelProfile:
    """Profile a diffusers-layout model folder from its configs and safetensors headers alone."""
    root = Path(path)
    if not root.is_dir():
        raise ModelProbeError(f"{root}: no such folder; expected a diffusers model folder")
    index_path = root / "model_index.json"
    index = _read_json(index_path, "a diffusers model_index.json with _class_name and _diffusers_version")
    if "_diffusers_version" not in index or "_class_name" not in index:
        raise ModelProbeError(
            f"{index_path}: no _diffusers_version/_class_name; expected a diffusers model_index.json")
    pipeline_class = str(index["_class_name"])
    if pipeline_class not in _PIPELINES:
        raise ModelProbeError(
            f"{index_path}: pipeline class {pipeline_class!r} is not a known family; expected one of "
            + ", ".join(sorted(_PIPELINES)))
    family, task = _PIPELINES[pipeline_class]
    is_video = "video" in task
    prec = _PRECISIONS[family]

    comps: dict[str, tuple[str, str]] = {}
    for k, v in index.items():
        if k.startswith("_") or not isinstance(v, (list, tuple)) or len(v) != 2 or v[0] is None:
            continue
        comps[k] = (str(v[0]), str(v[1]))

    fp_parts: dict = {"model_index": _norm(index), "components": {}}
    configs: dict[str, dict] = {}
    for name, (lib, cls) in sorted(comps.items()):
        d = root / name
        if name == "scheduler":
            sched = d / "scheduler_config.json"
            if sched.is_file():
                fp_parts["components"][name] = {"config": _norm(_read_json(sched, "a scheduler config"))}
            continue
        cfg = d / "config.json"
        if cfg.is_file():
            configs[name] = _read_json(cfg, f"the config of {lib}.{cls}")

    vae_cfg = configs.get("vae")
    if vae_cfg is None:
        raise ModelProbeError(f"{root / 'vae' / 'config.json'}: missing; expected the VAE config")
    spatial, temporal, latent = _vae_geometry(vae_cfg, is_video)

    components: dict[str, ComponentProfile] = {}
    dits: dict[str, DitProfile] = {}
    text_idx = 0
    for name, (lib, cls) in sorted(comps.items()):
        if name not in configs:
            continue  # tokenizers, schedulers, processors: no weights
        d = root / name
        files = _weight_files(d)
        tensors = _tensors_from_weights(files) if files else _tensors_from_config(d, lib, cls, configs[name])
        if name in _DIT_COMPONENTS:
            precision = prec.dit
        elif name == "vae":
            precision = prec.vae
        elif name.startswith("text_encoder"):
            suffix = name[len("text_encoder"):].lstrip("_")
            text_idx = int(suffix) - 1 if suffix.isdigit() else 0
            precision = prec.text_encoders[min(text_idx, len(prec.text_encoders) - 1)]
        elif name == "image_encoder":
            precision = prec.image_encoder
        else:
            precision = prec.dit
        nbytes = sum(_runtime_bytes(t, precision) for t in tensors.values())
        components[name] = ComponentProfile(
            name=name, library=lib, class_name=cls, params=sum(t.numel for t in tensors.values()),
            dtype=_PRECISION_NAMES[precision], bytes=nbytes,
            source="weights" if files else "config")
        if name in _DIT_COMPONENTS:
            dits[name] = _dit_profile(name, cls, family, configs[name], tensors, latent, is_video)
        fp_parts["components"][name] = {
            "config": _norm(configs[name]),
            "tensors": sorted((k, t.dtype, list(t.shape)) for k, t in tensors.items()),
        }

    sampling = SAMPLING_DEFAULTS[_sampling_class(root, pipeline_class)]
    cfg_default = (family in TRUE_CFG_FAMILIES and sampling.guidance_scale > 1.0
                   and sampling.has_negative_prompt)
    blob = json.dumps(fp_parts, sort_keys=True, separators=(",", ":")).encode()
    dit = dits.get("transformer") or (next(iter(dits.values())) if dits else None)
    return ModelProfile(
        path=str(root.resolve()), pipeline_class=pipeline_class, family=family, task=task,
        components=components, dit=dit, dits=dits, cfg_default=cfg_default,
        default_guidance_scale=sampling.guidance_scale, vae_spatial_compression=spatial,
        vae_temporal_compression=temporal, latent_channels=latent,
        fingerprint=hashlib.sha256(blob).hexdigest(), default_steps=sampling.steps,
        text_tokens=TEXT_TOKENS[family],
    )


# ---------------------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------------------

def _dit_to_dict(d: DitProfile) -> dict:
    out = asdict(d)
    out["num_layers"] = d.num_layers
    out["block_groups"] = [asdict(g) for g in d.block_groups]
    for k in ("layer_bytes", "layer_params", "patch_size"):
        out[k] = list(out[k])
    for g in out["block_groups"]:
        g["block_bytes"], g["block_params"] = list(g["block_bytes"]), list(g["block_params"])
    return out


def model_profile_to_dict(profile: ModelProfile) -> dict:
    """JSON-ready dict of a ModelProfile."""
    return {
        "path": profile.path,
        "pipeline_class": profile.pipeline_class,
        "family": profile.family,
        "task": profile.task,
        "is_video": profile.is_video,
        "components": {k: asdict(v) for k, v in profile.components.items()},
        "dit": _dit_to_dict(profile.dit) if profile.dit else None,
        "dits": {k: _dit_to_dict(v) for k, v in profile.dits.items()},
        "cfg_default": profile.cfg_default,
        "default_guidance_scale": profile.default_guidance_scale,
        "default_steps": profile.default_steps,
        "text_tokens": profile.text_tokens,
        "vae_spatial_compression": profile.vae_spatial_compression,
        "vae_temporal_compression": profile.vae_temporal_compression,
        "latent_channels": profile.latent_channels,
        "fingerprint": profile.fingerprint,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:8.3f} GB"


def format_model_table(profile: ModelProfile) -> str:
    """A terminal table: components, then each DiT's block groups."""
    lines = [
        f"{profile.pipeline_class} ({profile.family}, {profile.task})  fingerprint {profile.fingerprint[:12]}",
        f"guidance {profile.default_guidance_scale} (CFG {'on' if profile.cfg_default else 'off'}), "
        f"{profile.default_steps} steps; VAE /{profile.vae_spatial_compression} spatial, "
        f"/{profile.vae_temporal_compression} temporal, {profile.latent_channels} latent channels",
        "",
        f"{'component':<16}{'class':<34}{'params':>16}{'dtype':>10}{'bytes':>13}  from",
    ]
    for c in profile.components.values():
        lines.append(f"{c.name:<16}{c.class_name[:33]:<34}{c.params:>16,}{c.dtype:>10}{_gb(c.bytes):>13}  {c.source}")
    lines.append(f"{'total':<16}{'':<34}{sum(c.params for c in profile.components.values()):>16,}"
                 f"{'':>10}{_gb(sum(c.bytes for c in profile.components.values())):>13}")
    for d in profile.dits.values():
        lines += ["", f"{d.component}: {d.num_layers} layers, hidden {d.hidden_size}, {d.num_heads} heads x "
                      f"{d.head_dim}, patch {d.patch_size}, in_channels {d.in_channels}, {d.dtype}"]
        for g in d.block_groups:
            sizes = sorted(set(g.block_bytes))
            each = _gb(sizes[0]).strip() if len(sizes) == 1 else f"{_gb(sizes[0]).strip()}..{_gb(sizes[-1]).strip()}"
            lines.append(f"  {g.name:<28}{g.count:>4} x {each:>22}  = {_gb(sum(g.block_bytes))}")
        lines.append(f"  {'outside blocks':<28}{'':>31}{_gb(d.non_block_bytes)}")
        lines.append(f"  {'total':<28}{'':>31}{_gb(d.total_bytes)}")
    return "\n".join(lines)
