"""Config-only model folders for DiT families that have no diffusers class to build them from: the DiT
is sglang's own class, built on the meta device from the arch defaults sglang registers for the model
id, and the folder holds what a checkpoint would: model_index.json, transformer/config.json and a
safetensors file whose header lists every tensor of that module (names, dtypes, shapes).

The safetensors file is valid (its reader, and ours, check that the tensors tile the data section), but
its data section is a hole: the file is sparse, so a 60 GB header costs no disk (the probe never reads
tensor data: tests/test_probe_model.py::test_header_reader_reads_no_tensor_data).

The names in the header are sglang's module names (its state_dict), not a published checkpoint's: the
probe maps checkpoint names onto sglang's through the class's param_names_mapping, then matches
`^{layer_name}.(i).`; tests/test_model_families.py checks that the mapping leaves these names where
they are, so what is matched is what sglang's layerwise offload streams.

Building sglang's DiT classes needs what sglang's worker sets up before it loads a model: its parallel
state (here a gloo world of one CPU rank) and a global ServerArgs (its attention layers read the backend
from it). `sglang_cpu_world` sets both up and restores them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import struct
import warnings
from pathlib import Path

# torch dtype -> (safetensors dtype code, bytes per element): the safetensors format's names
_ST_DTYPES = {"torch.bfloat16": ("BF16", 2), "torch.float16": ("F16", 2), "torch.float32": ("F32", 4),
              "torch.float64": ("F64", 8), "torch.int64": ("I64", 8), "torch.int32": ("I32", 4),
              "torch.int16": ("I16", 2), "torch.int8": ("I8", 1), "torch.uint8": ("U8", 1), "torch.bool": ("BOOL", 1),
              "torch.float8_e4m3fn": ("F8_E4M3", 1), "torch.float8_e5m2": ("F8_E5M2", 1)}
_ELEMENT_BYTES = dict(_ST_DTYPES.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sglang_cpu_world(server_args_model: Path):
    """sglang's parallel state for one CPU rank (gloo) and a real ServerArgs (for `server_args_model`)
    as its global one, as sglang's worker has them when it builds a DiT; both restored after."""
    from sglang.multimodal_gen.runtime.distributed import parallel_state as ps
    from sglang.multimodal_gen.runtime.server_args import server_args as sa
    from sglang.multimodal_gen.runtime.utils.argparse import FlexibleArgumentParser

    argv = ["--model-path", str(server_args_model)]
    parsed, unknown = sa.ServerArgs.add_cli_args(FlexibleArgumentParser()).parse_known_args(argv)
    previous_args = sa._global_server_args
    sa.set_global_server_args(sa.ServerArgs.from_cli_args(parsed, unknown, argv=argv))
    ours = not ps.model_parallel_is_initialized()
    if ours:
        ps.init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                        distributed_init_method=f"tcp://127.0.0.1:{_free_port()}")
        ps.initialize_model_parallel(sequence_parallel_degree=1, backend="gloo")
    try:
        yield
    finally:
        if ours:
            ps.destroy_model_parallel()
            ps.destroy_distributed_environment()
        sa.set_global_server_args(previous_args)


def pipeline_config(model_id: str):
    """sglang's PipelineConfig for a model id it registers (or a name one of its detectors accepts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sglang.multimodal_gen import registry
    config_id = registry._MODEL_HF_PATH_TO_NAME.get(model_id) or next(
        (cid for cid, detector in registry._MODEL_NAME_DETECTORS if detector(model_id.lower())), None)
    if config_id is None:
        raise KeyError(f"sglang registers no model id or detector for {model_id!r}")
    return registry._CONFIG_REGISTRY[config_id].pipeline_config_cls()


def _jsonable(value):
    value = list(value) if isinstance(value, tuple) else value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def arch_config_json(model_id: str) -> dict:
    """The JSON fields of sglang's DiT arch config for `model_id`, under sglang's own names (what its
    loader's update_model_arch sets from a checkpoint's config.json); name mappings, private fields
    and fields left at None (sglang's default stands) left out."""
    arch = pipeline_config(model_id).dit_config.arch_config
    out = {}
    for f in dataclasses.fields(arch):
        value = _jsonable(getattr(arch, f.name))
        if f.name.startswith("_") or "mapping" in f.name or value is None:
            continue
        out[f.name] = value
    return out


def build_sglang_dit(model_id: str, dit_class: str, config: dict):
    """sglang's DiT class `dit_class` on the meta device, built as its transformer loader builds it:
    the pipeline config's dit_config updated from `config` (a config.json), bf16 parameters."""
    import torch
    from sglang.multimodal_gen.runtime.loader.utils import initialize_model
    from sglang.multimodal_gen.runtime.models.registry import ModelRegistry

    hf_config = {k: v for k, v in config.items() if k != "_class_name"}  # the loader pops _class_name
    dit_config = pipeline_config(model_id).dit_config
    dit_config.update_model_arch(hf_config)
    cls, _ = ModelRegistry.resolve_model_cls(dit_class)
    return initialize_model(cls, {"config": dit_config, "hf_config": hf_config, "quant_config": None},
                            torch.bfloat16, torch.device("meta"))


def checkpoint_tensors(module) -> dict[str, tuple[str, list[int]]]:
    """What saving the module writes: its state_dict, a tensor shared under several names once."""
    out, seen = {}, set()
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = (_ST_DTYPES[str(t.dtype)][0], list(t.shape))
    return out


def write_sparse_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file holding `tensors` (name -> (dtype, shape)) whose data section is a hole."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        numel = 1
        for d in shape:
            numel *= d
        size = numel * _ELEMENT_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads its header to 8 bytes with spaces
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    if os.stat(path).st_blocks * 512 > 64 * 1024 * 1024:  # a file system that fills holes
        path.unlink()
        raise OSError(f"{path.parent}: the file system does not keep sparse files; refusing to write "
                      f"{offset} bytes of zeros")


def write_sglang_folder(folder: Path, pipeline: str, dit_class: str, config: dict, module, vae: dict) -> Path:
    """A model folder as a checkpoint of `module` would be laid out: model_index.json, the DiT's config
    and its safetensors header, and a VAE config (for the latent geometry the probe reads)."""
    index = {"_class_name": pipeline, "_diffusers_version": "0.36.0",
             "transformer": ["diffusers", dit_class], "vae": ["diffusers", vae["_class_name"]]}
    files = {"model_index.json": index, "transformer/config.json": {"_class_name": dit_class, **config},
             "vae/config.json": vae}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data))
    write_sparse_safetensors(folder / "transformer" / "diffusion_pytorch_model.safetensors",
                             checkpoint_tensors(module))
    return folder
