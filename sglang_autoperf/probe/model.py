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
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..sglang_adapter.models import (
    DIT_COMPONENTS,
    DitLayout,
    SglangModel,
    SglangModelError,
    dit_layout,
    layer_index_pattern,
    resolve_model,
)
from .files import open_regular, parse_json, read_json_file


class ModelProbeError(ValueError):
    """A model folder that cannot be profiled; the message names the file and what was expected."""


class NotNativeError(ModelProbeError):
    """sglang would run the folder with its diffusers backend (no layerwise offload): nothing to plan.
    `resolved` is sglang's answer as data; the message is its one-line reason."""

    def __init__(self, message: str, resolved: SglangModel):
        super().__init__(message)
        self.resolved = resolved


@dataclass(frozen=True)
class BlockGroup:
    name: str  # sglang's layer_names entry, e.g. "transformer_blocks", "single_transformer_blocks"
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
    sglang_class: str = ""  # the DiT class sglang builds (its registry, aliases resolved)

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
    family: str  # the module of sglang's pipeline config: "wan", "flux", "qwen_image", "zimage", ...
    task: str  # "text-to-image", "text-to-video", "image-to-video", "image-edit", ... (sglang's task type)
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
    guidance_is_cfg: bool = False  # a guidance scale > 1 adds the negative pass (sglang has a default negative prompt)
    pipeline_config_class: str = ""  # sglang's PipelineConfig subclass for this folder
    sampling_class: str = ""  # sglang's SamplingParams subclass for this folder

    @property
    def is_video(self) -> bool:
        return "video" in self.task


# Bits per element of every safetensors dtype (sub-byte ones are packed).
_DTYPE_BITS = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "C64": 64, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4,
    "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U64": 64, "U32": 32, "U16": 16, "U8": 8, "BOOL": 8,
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_PRECISION_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_MAX_DIMS = 16  # no weight has more; bounds the size arithmetic of a hostile shape
# Blocks in one DiT, or a layer count in a config built without weights. Published DiTs have at
# most 60 blocks per list and text encoders ~100 layers; 1024 is a few seconds of planning (linear
# in blocks) or of building on the meta device, so a hostile folder cannot stall sglang's startup.
MAX_LAYERS = 1024


# ---------------------------------------------------------------------------------------------
# File readers
# ---------------------------------------------------------------------------------------------

def _read_json(path: Path, expected: str) -> dict:
    if not os.path.lexists(path):
        raise ModelProbeError(f"{path}: missing; expected {expected}")
    data = read_json_file(path, ModelProbeError, expected)
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


def _disk_bytes(t: TensorInfo) -> int:
    return -(-t.numel * _DTYPE_BITS[t.dtype] // 8)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a .safetensors file's header; never reads tensor data.

    Every entry is checked against the file: a known dtype, a shape whose bytes are exactly its
    data_offsets span, spans inside the data section and not overlapping."""
    path = Path(path)
    with open_regular(path, ModelProbeError, "a safetensors file") as f:
        try:
            size = os.fstat(f.fileno()).st_size
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
    header = parse_json(raw, path, ModelProbeError, "a safetensors header")
    if not isinstance(header, dict):
        raise ModelProbeError(f"{path}: safetensors header is not valid JSON (a {type(header).__name__}, "
                              "not an object)")
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        out[name], begin, end = _header_entry(path, name, meta, data_len)
        spans.append((begin, end, name))
    _check_coverage(path, sorted(spans), data_len)
    return out


def _check_coverage(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """The tensors tile the data section exactly, as safetensors itself requires (its reader refuses
    a gap, an overlap or trailing bytes: tests/test_safetensors_crosscheck.py)."""
    covered, last = 0, None
    for begin, end, name in spans:
        if begin != covered:
            what = f"overlaps {last!r}" if begin < covered else f"starts at {begin}, leaving a gap after byte {covered}"
            raise ModelProbeError(f"{path}: tensor {name!r} {what} in the data section; expected the tensors "
                                  "to tile it")
        covered, last = end, name
    if covered != data_len:
        raise ModelProbeError(f"{path}: the tensors cover {covered} of the data section's {data_len} bytes; "
                              "expected them to tile it")


def _header_entry(path: Path, name: str, meta, data_len: int) -> tuple[TensorInfo, int, int]:
    """One header entry, checked: (its TensorInfo, begin, end)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(meta, dict):
        raise ModelProbeError(f"{where} is a {type(meta).__name__}; expected an object with dtype/shape/data_offsets")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
        raise ModelProbeError(f"{where} has dtype {dtype!r}; expected a safetensors dtype "
                              f"({', '.join(sorted(_DTYPE_BITS))})")
    if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS and all(_is_count(d) for d in shape)):
        raise ModelProbeError(f"{where} has shape {shape!r}; expected a list of at most {_MAX_DIMS} "
                              "non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)
            and offsets[0] <= offsets[1]):
        raise ModelProbeError(f"{where} has data_offsets {offsets!r}; expected [begin, end] with "
                              "0 <= begin <= end")
    begin, end = offsets
    if end > data_len:
        raise ModelProbeError(f"{where} ends at byte {end} of a {data_len}-byte data section; "
                              "the file is truncated")
    info = TensorInfo(dtype, tuple(shape))
    if _disk_bytes(info) != end - begin:
        raise ModelProbeError(f"{where} has shape {shape} of {dtype} ({_disk_bytes(info)} bytes) but "
                              f"data_offsets [{begin}, {end}] hold {end - begin} bytes; expected them to agree")
    return info, begin, end


def confined(base: Path, name: str, source: Path, what: str, links_out: bool = False) -> Path:
    """`base / name` where `name` (read from `source`) must stay inside `base`: relative, no '..',
    and, resolved, still inside; `links_out` lets the last part be a link that leads elsewhere."""
    pure = PurePosixPath(name)
    path = base / name
    outside = (not name or pure.is_absolute() or PureWindowsPath(name).is_absolute() or "\\" in name
               or ".." in pure.parts)
    if not outside:
        real_base = base.resolve()
        checked = (path.parent if links_out else path).resolve()
        outside = checked != real_base and real_base not in checked.parents
    if outside:
        raise ModelProbeError(f"{source}: {what} {name!r} leads outside {base}; expected a name inside the "
                              "model folder")
    return path


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
        shards = set(wm.values())
        if not all(isinstance(v, str) for v in shards):
            raise ModelProbeError(f"{index}: a 'weight_map' value is not a file name; expected shard names")
        files = []
        for shard in sorted(shards):
            # The shard itself may be a link (the Hugging Face cache links files into blobs/).
            p = confined(comp_dir, shard, index, "shard", links_out=True)
            if not os.path.lexists(p):
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
            build = lambda: cls(cls.config_class.from_dict(config))  # noqa: E731  (its errors: a failed build)
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
            why = " ".join(str(e).split())  # library messages span lines; ours is one
            raise ModelProbeError(
                f"{cfg_path}: no weights and building {class_name} from it failed ({type(e).__name__}: {why})"
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

def _runtime_bytes(t: TensorInfo, precision: str) -> int:
    # floating tensors are cast to the run-time dtype; integer buffers keep theirs
    if t.dtype in _FLOAT_DTYPES:
        return t.numel * _PRECISION_BYTES[precision]
    return _disk_bytes(t)


def _config_int(config: dict, key: str, where: Path, default: int | None = None) -> int:
    """A positive integer field of a config (`default` where it is missing or null); zero, negative
    or another type is an error."""
    v = config.get(key)
    if v is None and default is not None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        found = "missing" if v is None else f"{v!r}"
        raise ModelProbeError(f"{where}: {key} is {found}; expected a positive integer")
    return v


def _first_key(config: dict, *keys: str) -> str:
    return next((k for k in keys if config.get(k) is not None), keys[0])


def _dit_geometry(config: dict, where: Path, latent_channels: int, is_video: bool) -> dict:
    """hidden size, heads, head dim, patch and input channels of a DiT config, each checked."""
    heads = _config_int(config, _first_key(config, "num_attention_heads", "num_heads"), where)
    head_dim = _config_int(config, "attention_head_dim", where) if config.get("attention_head_dim") is not None else 0
    hidden_key = _first_key(config, "hidden_size", "dim")
    if config.get(hidden_key) is not None:
        hidden = _config_int(config, hidden_key, where)
    elif head_dim:
        hidden = heads * head_dim
    else:
        raise ModelProbeError(f"{where}: no attention_head_dim, hidden_size or dim; expected the width of the DiT")
    head_dim = head_dim or hidden // heads
    in_channels = _config_int(config, "in_channels", where)
    patch_key = _first_key(config, "patch_size", "all_patch_size")  # Z-Image: all_patch_size
    patch_raw = 1 if config.get(patch_key) is None else config[patch_key]
    patch_list = patch_raw if isinstance(patch_raw, list) else [patch_raw]
    if not patch_list or len(patch_list) > 3:
        raise ModelProbeError(f"{where}: patch_size is {patch_raw!r}; expected a positive integer or 2-3 of them")
    patch = tuple(_config_int({"patch_size": v}, "patch_size", where) for v in patch_list)
    # The token patch in latent pixels. FLUX packs 2x2 latents into 64 channels before a
    # patch_size=1 embedder; Qwen-Image packs the same way and states patch_size=2.
    if len(patch) == 1:
        p = patch[0]
        if p == 1 and in_channels == 4 * latent_channels:
            p = 2
        patch = (_config_int(config, "patch_size_t", where, default=1), p, p) if is_video else (p, p)
    return {"hidden_size": hidden, "num_heads": heads, "head_dim": head_dim, "patch_size": patch,
            "in_channels": in_channels}


def _sglang_blocks(tensors: dict[str, TensorInfo], layout: DitLayout) -> dict[str, dict[int, list[str]]]:
    """Checkpoint tensors of each of sglang's layer_names, by block index: names mapped the way
    sglang's loader maps them, then matched against `^{layer_name}.(i).`."""
    patterns = [(n, layer_index_pattern(n)) for n in layout.layer_names]
    out: dict[str, dict[int, list[str]]] = {}
    for name in tensors:
        mapped = layout.to_sglang_name(name)
        for layer_name, pattern in patterns:
            m = pattern.match(mapped)
            if m:
                out.setdefault(layer_name, {}).setdefault(int(m.group(1)), []).append(name)
                break
    return out


def _dit_profile(component: str, class_name: str, model: SglangModel, config: dict, where: Path,
                 tensors: dict[str, TensorInfo], latent_channels: int, is_video: bool) -> DitProfile:
    precision = _precision(model.dit_precision, where)
    try:
        layout = dit_layout(model, component, config)
    except SglangModelError as e:
        raise ModelProbeError(f"{where}: {e}") from None
    if not layout.layer_names:
        raise ModelProbeError(f"{where}: sglang's {layout.class_name} declares no layer_names; its layerwise "
                              "offload cannot stream this DiT, so there is nothing to plan")
    lists = _sglang_blocks(tensors, layout)
    names = [n for n in layout.layer_names if n in lists]  # execution order = layer_names order
    if not names:
        raise ModelProbeError(f"{where.parent}: no tensor matches sglang's layer_names {list(layout.layer_names)} "
                              f"among its {len(tensors)} tensors; expected the weights of a {layout.class_name}")
    count = sum(len(lists[n]) for n in names)
    if count > MAX_LAYERS:
        raise ModelProbeError(f"{where}: {count} blocks; expected at most {MAX_LAYERS}")
    groups = []
    for gname in names:
        blocks = lists[gname]
        if sorted(blocks) != list(range(len(blocks))):
            raise ModelProbeError(f"{where.parent}: {gname} has blocks {sorted(blocks)[:8]}...; expected 0..n-1")
        bb = tuple(sum(_runtime_bytes(tensors[t], precision) for t in blocks[i]) for i in range(len(blocks)))
        bp = tuple(sum(tensors[t].numel for t in blocks[i]) for i in range(len(blocks)))
        groups.append(BlockGroup(gname, len(blocks), bb, bp))
    total = sum(_runtime_bytes(t, precision) for t in tensors.values())
    layer_bytes = tuple(b for g in groups for b in g.block_bytes)
    layer_params = tuple(p for g in groups for p in g.block_params)
    return DitProfile(
        component=component, class_name=class_name, dtype=_PRECISION_NAMES[precision],
        block_groups=tuple(groups), layer_bytes=layer_bytes, layer_params=layer_params,
        non_block_bytes=total - sum(layer_bytes), total_bytes=total,
        # the config's own fields first; sglang's arch config fills what a family names differently
        **_dit_geometry({**layout.arch_geometry, **config}, where, latent_channels, is_video),
        sglang_class=layout.class_name,
    )


def _precision(name: str, where: Path) -> str:
    if name not in _PRECISION_BYTES:
        raise ModelProbeError(f"{where}: sglang runs this component in {name!r}; the probe knows "
                              f"{', '.join(sorted(_PRECISION_BYTES))}")
    return name


def _int_list(config: dict, key: str, where: Path) -> list:
    v = config[key]
    if not isinstance(v, list) or not v or len(v) > 16:
        raise ModelProbeError(f"{where}: {key} is {v!r}; expected a list of 1 to 16 entries")
    return v


def _vae_geometry(config: dict, where: Path, is_video: bool) -> tuple[int, int, int]:
    """(spatial, temporal, latent channels) compression of a VAE config."""
    latent = _config_int(config, _first_key(config, "z_dim", "latent_channels"), where)
    if "scale_factor_spatial" in config or "spatial_compression_ratio" in config:
        spatial = _config_int(config, _first_key(config, "scale_factor_spatial", "spatial_compression_ratio"), where)
    elif "dim_mult" in config:  # Wan / Qwen-Image causal VAE
        spatial = 2 ** (len(_int_list(config, "dim_mult", where)) - 1)
    elif "block_out_channels" in config:
        spatial = 2 ** (len(_int_list(config, "block_out_channels", where)) - 1)
    else:
        raise ModelProbeError(f"{where}: no scale_factor_spatial, dim_mult or block_out_channels; "
                              "expected a VAE config that tells its spatial compression")
    if "scale_factor_temporal" in config or "temporal_compression_ratio" in config:
        temporal = _config_int(config, _first_key(config, "scale_factor_temporal", "temporal_compression_ratio"),
                               where)
    elif "temperal_downsample" in config:
        temporal = 2 ** sum(bool(x) for x in _int_list(config, "temperal_downsample", where))
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


def _components(root: Path, index_path: Path, index: dict) -> dict[str, tuple[str, str]]:
    """Component folder name -> (library, class) from model_index.json; every folder inside `root`."""
    comps: dict[str, tuple[str, str]] = {}
    for k, v in index.items():
        if k.startswith("_") or not isinstance(v, (list, tuple)) or len(v) != 2 or v[0] is None:
            continue
        confined(root, k, index_path, "component folder")
        comps[k] = (str(v[0]), str(v[1]))
    return comps


def _configs(root: Path, comps: dict[str, tuple[str, str]], fp_parts: dict) -> dict[str, dict]:
    """Each component's config.json (the scheduler's goes into the fingerprint only)."""
    configs: dict[str, dict] = {}
    for name, (lib, cls) in sorted(comps.items()):
        d = root / name
        if name == "scheduler":
            sched = d / "scheduler_config.json"
            if os.path.lexists(sched):  # read, so that a FIFO or a broken link is an error, not skipped
                fp_parts["components"][name] = {"config": _norm(_read_json(sched, "a scheduler config"))}
            continue
        cfg = d / "config.json"
        if os.path.lexists(cfg) or name in DIT_COMPONENTS:  # the DiT's config is required
            configs[name] = _read_json(cfg, f"the config of {lib}.{cls}")
    return configs


_LAYER_KEY = re.compile(r"layer|depth|blocks", re.IGNORECASE)


def _check_layer_counts(config, where: Path) -> None:
    """Refuse a config whose layer counts (at any depth) exceed MAX_LAYERS: built on the meta
    device, 100,000 layers take minutes."""
    todo = [config]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(v, (dict, list)):
                todo.append(v)
            elif (isinstance(k, str) and _LAYER_KEY.search(k) and isinstance(v, int) and not isinstance(v, bool)
                  and v > MAX_LAYERS):
                raise ModelProbeError(f"{where}: {k} is {v}; expected at most {MAX_LAYERS} layers")


def _component_precision(name: str, model: SglangModel) -> str:
    """sglang's run-time precision of a component (its PipelineConfig's *_precision fields)."""
    if name in DIT_COMPONENTS:
        return model.dit_precision
    if name == "vae":
        return model.vae_precision
    if name.startswith("text_encoder"):
        suffix = name[len("text_encoder"):].lstrip("_")
        text_idx = int(suffix) - 1 if suffix.isdigit() else 0
        precisions = model.text_encoder_precisions or (model.dit_precision,)
        return precisions[min(text_idx, len(precisions) - 1)]
    if name == "image_encoder":
        return model.image_encoder_precision
    return model.dit_precision


def _resolve(index_path: Path, index_class: str, model_id: str | None, backend: str | None) -> SglangModel:
    """sglang's answer for the folder; a diffusers-backend answer is a NotNativeError."""
    try:
        resolved = resolve_model(str(index_path.parent), index_class, model_id=model_id, backend=backend)
    except (ImportError, MemoryError) as e:
        raise ModelProbeError(f"{index_path}: cannot read sglang's model registry ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})") from None
    except SglangModelError as e:
        raise ModelProbeError(f"{index_path}: {e}") from None
    if not resolved.native:
        raise NotNativeError(f"{index_path}: {resolved.backend_reason}", resolved)
    return resolved


def _read_index(root: Path) -> tuple[Path, dict]:
    if not root.is_dir():
        raise ModelProbeError(f"{root}: no such folder; expected a diffusers model folder")
    index_path = root / "model_index.json"
    index = _read_json(index_path, "a diffusers model_index.json with _class_name and _diffusers_version")
    if "_diffusers_version" not in index or "_class_name" not in index:
        raise ModelProbeError(
            f"{index_path}: no _diffusers_version/_class_name; expected a diffusers model_index.json")
    return index_path, index


def _read_weights(root: Path, configs: dict[str, dict]) -> dict[str, dict[str, TensorInfo]]:
    """The safetensors headers of every component that has weights; a config-only component's layer
    counts are bounded instead (it is built on the meta device later). File errors surface here,
    before sglang is imported."""
    read: dict[str, dict[str, TensorInfo]] = {}
    for name in sorted(configs):
        files = _weight_files(root / name)
        if files:
            read[name] = _tensors_from_weights(files)
        else:
            _check_layer_counts(configs[name], root / name / "config.json")
    return read


def _profile_components(root: Path, comps: dict[str, tuple[str, str]], configs: dict[str, dict],
                        read: dict[str, dict[str, TensorInfo]], model: SglangModel, latent: int, fp_parts: dict
                        ) -> tuple[dict[str, ComponentProfile], dict[str, DitProfile]]:
    """Each component with a config: its bytes at sglang's run-time precision; each DiT's blocks."""
    components: dict[str, ComponentProfile] = {}
    dits: dict[str, DitProfile] = {}
    for name, (lib, cls) in sorted(comps.items()):
        if name not in configs:
            continue  # tokenizers, schedulers, processors: no weights
        d = root / name
        files = name in read
        tensors = read[name] if files else _tensors_from_config(d, lib, cls, configs[name])
        precision = _precision(_component_precision(name, model), d / "config.json")
        components[name] = ComponentProfile(
            name=name, library=lib, class_name=cls, params=sum(t.numel for t in tensors.values()),
            dtype=_PRECISION_NAMES[precision], bytes=sum(_runtime_bytes(t, precision) for t in tensors.values()),
            source="weights" if files else "config")
        if name in DIT_COMPONENTS:
            dits[name] = _dit_profile(name, cls, model, configs[name], d / "config.json", tensors, latent,
                                      "video" in model.task)
        fp_parts["components"][name] = {
            "config": _norm(configs[name]),
            "tensors": sorted((k, t.dtype, list(t.shape)) for k, t in tensors.items()),
        }
    return components, dits


def probe_model(path: str | os.PathLike, model_id: str | None = None, backend: str | None = None) -> ModelProfile:
    """Profile a diffusers-layout model folder from its configs and safetensors headers alone, with
    what sglang's registry says about it (`model_id`, `backend`: sglang's --model-id and --backend).
    A folder sglang would run with its diffusers backend raises NotNativeError."""
    root = Path(path)
    index_path, index = _read_index(root)
    comps = _components(root, index_path, index)
    fp_parts: dict = {"model_index": _norm(index), "components": {}}
    configs = _configs(root, comps, fp_parts)
    read = _read_weights(root, configs)
    model = _resolve(index_path, str(index["_class_name"]), model_id, backend)
    if not any(k in DIT_COMPONENTS for k in comps):
        raise ModelProbeError(f"{index_path}: names no {' or '.join(DIT_COMPONENTS)}; expected the "
                              "diffusion transformer among the components")
    vae_cfg = configs.get("vae")
    if vae_cfg is None:
        raise ModelProbeError(f"{root / 'vae' / 'config.json'}: missing; expected the VAE config")
    spatial, temporal, latent = _vae_geometry(vae_cfg, root / "vae" / "config.json", "video" in model.task)
    components, dits = _profile_components(root, comps, configs, read, model, latent, fp_parts)
    blob = json.dumps(fp_parts, sort_keys=True, separators=(",", ":")).encode()
    dit = dits.get("transformer") or (next(iter(dits.values())) if dits else None)
    return ModelProfile(
        path=str(root.resolve()), pipeline_class=model.pipeline_class, family=model.family, task=model.task,
        components=components, dit=dit, dits=dits, cfg_default=model.cfg_default,
        default_guidance_scale=model.default_guidance_scale, vae_spatial_compression=spatial,
        vae_temporal_compression=temporal, latent_channels=latent,
        fingerprint=hashlib.sha256(blob).hexdigest(), default_steps=model.default_steps,
        text_tokens=model.text_tokens, guidance_is_cfg=model.guidance_is_cfg,
        pipeline_config_class=model.pipeline_config_class, sampling_class=model.sampling_class,
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
        "guidance_is_cfg": profile.guidance_is_cfg,
        "pipeline_config_class": profile.pipeline_config_class,
        "sampling_class": profile.sampling_class,
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
