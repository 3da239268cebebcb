"""Every DiT class sglang 0.5.23 registers: the probe reads it and the planner plans it, or it is listed
here as excluded with its reason (the README's coverage table says the same).

Folders are config-only, built in the test: the DiT's config.json holds sglang's own arch-config
defaults (its PipelineConfig.dit_config), the folder is named like the model id sglang registers for
that family (so sglang's registry resolves it natively, as it would a downloaded checkpoint), and the
probe builds the diffusers class on the meta device: no weights, no download.

Families diffusers has no class for (BUILT_FROM_SGLANG) are built from sglang's own DiT class on the
meta device instead, and their folder carries a safetensors header of that module (tests/sglang_dit_folders.py):
the probe reads them from the header, as it would a downloaded checkpoint.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
from pathlib import Path

import pytest

import sglang_dit_folders
from sglang_autoperf.probe.model import probe_model
from sglang_autoperf.probe.workload import workload_for
from test_cost_model import h100

FIXTURES = Path(__file__).parent / "fixtures" / "models"
GiB = 1024**3

# VAE configs for the geometry the probe reads (latent channels, spatial and temporal compression);
# diffusers' own classes with their published layouts, built on the meta device by the probe.
IMAGE_VAE_16 = {"_class_name": "AutoencoderKL", "latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                "layers_per_block": 2}  # FLUX.1 / SD3 / Z-Image / LongCat: /8, 16 channels
FLUX2_VAE = dict(IMAGE_VAE_16, latent_channels=32)  # FLUX.2: /8, 32 channels
SANA_VAE = {"_class_name": "AutoencoderKL", "latent_channels": 32, "scale_factor_spatial": 32,
            "block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4, "layers_per_block": 1}  # DC-AE: /32
WAN_VAE = {"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
           "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0}
LTX2_VAE = {"_class_name": "AutoencoderKLWan", "base_dim": 8, "z_dim": 128, "dim_mult": [1, 2, 2, 2, 2, 2],
            "num_res_blocks": 1, "attn_scales": [], "temperal_downsample": [False, True, True, True, False],
            "dropout": 0.0, "scale_factor_spatial": 32, "scale_factor_temporal": 8}  # LTX-2: /32, /8, 128 channels


@dataclasses.dataclass(frozen=True)
class Family:
    folder: str  # the short name of a model id sglang registers for it
    pipeline: str  # model_index.json _class_name
    vae: dict
    lists: tuple[str, ...]  # sglang's layer_names, in execution order (read by hand from its class)


# DiT classes read from a config-only folder built from sglang's arch defaults.
BUILT = {
    "ZImageTransformer2DModel": Family("Z-Image-Turbo", "ZImagePipeline", IMAGE_VAE_16, ("layers",)),
    "Flux2Transformer2DModel": Family("FLUX.2-klein-4B", "Flux2KleinPipeline", FLUX2_VAE,
                                      ("transformer_blocks", "single_transformer_blocks")),
    "SD3Transformer2DModel": Family("stable-diffusion-3-medium-diffusers", "StableDiffusion3Pipeline", IMAGE_VAE_16,
                                    ("transformer_blocks",)),
    "SanaTransformer2DModel": Family("Sana_1600M_1024px_diffusers", "SanaPipeline", SANA_VAE, ("transformer_blocks",)),
    "SanaVideoTransformer3DModel": Family("SANA-Video_2B_480p_diffusers", "SanaVideoPipeline", WAN_VAE,
                                          ("transformer_blocks",)),
    "LTX2VideoTransformer3DModel": Family("LTX-2", "LTX2Pipeline", LTX2_VAE, ("transformer_blocks",)),
    "LongCatImageTransformer2DModel": Family("LongCat-Image", "LongCatImagePipeline", IMAGE_VAE_16,
                                             ("transformer_blocks", "single_transformer_blocks")),
    "HeliosTransformer3DModel": Family("Helios-Base", "HeliosPipeline", WAN_VAE, ("blocks",)),
}
# DiT classes read from the published configs in tests/fixtures/models (test_probe_model.py checks
# their block bytes against hand formulas).
PUBLISHED = {
    "WanTransformer3DModel": "Wan2.1-T2V-14B-Diffusers",
    "FluxTransformer2DModel": "FLUX.1-dev",
    "QwenImageTransformer2DModel": "Qwen-Image",
    "HunyuanVideoTransformer3DModel": "HunyuanVideo",
}
@dataclasses.dataclass(frozen=True)
class SglangFamily:
    model_id: str  # a model id sglang registers (or a name its detector accepts); the folder is its last part
    pipeline: str  # model_index.json _class_name: the pipeline sglang registers for that config
    contract: tuple = ()  # (key, value) a checkpoint's config must carry that sglang has no default for


# DiT classes read from a folder holding a safetensors header of sglang's own module (built on the meta
# device from its arch defaults for model_id). Ming-Image's config must state its padding/output
# contract (sglang refuses a config without one); the single-image Design checkpoint's is this one.
BUILT_FROM_SGLANG = {
    "ErnieImageTransformer2DModel": SglangFamily("baidu/ERNIE-Image", "ErnieImagePipeline"),
    "AnimaTransformer3DModel": SglangFamily("circlestone-labs/Anima-Base-v1.0-Diffusers", "AnimaModularPipeline"),
    "CausalLingBotWorldTransformer3DModel": SglangFamily("robbyant/lingbot-world-fast-diffusers",
                                                         "LingBotWorldCausalDMDPipeline"),
    "LingBotWorldTransformer3DModel": SglangFamily("robbyant/lingbot-world-v2-14b-causal-fast-diffusers",
                                                   "LingBotWorldCausalDMDPipeline"),
    "CausalWanTransformer3DModel": SglangFamily("Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanCausalDMDPipeline"),
    "Cosmos3OmniTransformer": SglangFamily("nvidia/Cosmos3-Nano", "Cosmos3OmniPipeline"),
    "Hunyuan3D2DiT": SglangFamily("tencent/Hunyuan3D-2", "Hunyuan3D2Pipeline"),
    "Ideogram4Transformer2DModel": SglangFamily("ideogram-ai/ideogram-4-fp8", "Ideogram4Pipeline"),
    "JoyImageEditTransformer3DModel": SglangFamily("jdopensource/JoyAI-Image-Edit-Diffusers", "JoyImageEditPipeline"),
    # the same registry entry; sglang builds either class its config names with JoyImageDiTConfig
    "JoyTransformer3DModel": SglangFamily("jdopensource/JoyAI-Image-Edit-Diffusers", "JoyImageEditPipeline"),
    "Kandinsky6SRTransformer3DModel": SglangFamily("kandinskylab/Kandinsky-6.0-VSR-5s-Diffusers",
                                                   "Kandinsky6SRPipeline"),
    "Krea2Transformer2DModel": SglangFamily("krea/Krea-2", "Krea2Pipeline"),
    "LongLive2Transformer3DModel": SglangFamily("Efficient-Large-Model/LongLive-2.0-5B", "LongLive2Pipeline"),
    "MOSSImageTransformer": SglangFamily("OpenMOSS-Team/MOSS-Image-Base", "MOSSImagePipeline"),
    "MingImageTransformer2DModel": SglangFamily("inclusionAI/Ming-Image-0.1-Design", "MingImagePipeline",
                                                (("alignment_padding_mode", "zero_masked"),
                                                 ("multi_frame_output", False))),
    "MiniMaxH3DiTModel": SglangFamily("MiniMaxAI/MiniMax-H3", "MiniMaxH3Pipeline"),
    "NomasTransformer3DModel": SglangFamily("tencent/Hy-Nomas", "NomasPipeline"),
    "QwenImage21Transformer2DModel": SglangFamily("Qwen/Qwen-Image-2.1", "QwenImage21Pipeline"),
    "SanaWMTransformer3DModel": SglangFamily("Efficient-Large-Model/SANA-WM_bidirectional", "SanaWMPipeline"),
    "WanAnimate2Transformer3DModel": SglangFamily("Wan-AI/Wan2.2-Animate-2-14B-Diffusers", "WanAnimate2Pipeline"),
    "LingBotVideoTransformer3DModel": SglangFamily("LingBot-Video-MoE", "LingBotVideoPipeline"),
}

_NO_LISTS = "declares no layer_names: sglang's layerwise offload cannot stream it, nothing to place"
_COMPUTED = "computes layer_names from the built module (not readable from files alone)"
_PAINT = ("a UNet of Hunyuan3D's paint stage, which builds it itself from the checkpoint's hunyuan3d-paint-v2-0 "
          "folder: not a component of model_index.json, nothing the probe or the planner places")
_CONTRACT = ("sglang refuses a config without the exported checkpoint's {what} (\"{error}\"); its values (cameras, "
             "windows, schema) are not published here and a made-up one would test nothing")
_MOVA = ("a MOVA tower: MOVA's DiTs are the components video_dit, video_dit_2 and audio_dit (a dual-tower "
         "bridge between them), and the probe reads transformer / transformer_2 only")
EXCLUDED = {
    "HunyuanImage3ForCausalMM": _NO_LISTS, "SanaVideo2Transformer3DModel": _NO_LISTS,
    "GlmImageTransformer2DModel": _NO_LISTS, "LLaDAImageTransformer2DModel": _NO_LISTS,
    "LLaDAImageQueryFormerModel": "an LLaDA-Image helper module, not a DiT; " + _NO_LISTS,
    "LLaDAImageSigVQModel": "an LLaDA-Image tokenizer (VQ), not a DiT; " + _NO_LISTS,
    "LLaDAImageTextProjectionModel": "an LLaDA-Image projection, not a DiT; " + _NO_LISTS,
    "Flux3ImageDiT": _COMPUTED, "Kandinsky6Transformer3DModel": _COMPUTED,
    "Flux3Transformer": _COMPUTED,  # content_mode_blocks.{stream} for each stream of its config
    "Hunyuan3DPaintUNet": _PAINT, "StableDiffusionUNet2DConditionModel": _PAINT,
    "Cosmos3MultiviewTransformer": _CONTRACT.format(
        what="multiview contract", error="Cosmos3 multiview transformer config must contain a 'multiview' object."),
    "Cosmos3SimAutoTransformer": _CONTRACT.format(
        what="Sim-Auto artifact", error="Cosmos3-Nano-Sim-Auto requires transformer/config.json"
                                        "['cosmos3_nano_sim_auto']"),
    "CosmosDreamsTransformer": _CONTRACT.format(
        what="schema-v1 artifact", error="Cosmos-Dreams requires a schema-v1 artifact under transformer/config.json"
                                         "['cosmos3_nano_sim_bimanual']"),
    "SanaWMLTX2VideoRefiner": ("SANA-WM's stage-2 refiner, which its two-stage pipeline loads itself from refiner/ "
                               "(not a model_index.json component); built with SANA-WM's DiT config it fails "
                               "('SanaWMArchConfig' object has no attribute 'timestep_scale_multiplier')"),
    "WanAudioModel": _MOVA, "WanModel": _MOVA,
}


def _arch_defaults(folder: str, diffusers_cls) -> dict:
    """sglang's arch-config defaults for the model id `folder` names, restricted to what the diffusers
    class takes."""
    from sglang.multimodal_gen import registry

    config = registry._get_config_info(folder).pipeline_config_cls()
    arch = config.dit_config.arch_config
    accepted = set(inspect.signature(diffusers_cls.__init__).parameters) - {"self"}
    out = {}
    for f in dataclasses.fields(arch):
        if f.name in accepted:
            value = getattr(arch, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


@functools.lru_cache(maxsize=None)
def built_folder(dit_class: str, root: str) -> Path:
    import diffusers

    fam = BUILT[dit_class]
    folder = Path(root) / fam.folder
    config = {"_class_name": dit_class, **_arch_defaults(fam.folder, getattr(diffusers, dit_class))}
    index = {"_class_name": fam.pipeline, "_diffusers_version": "0.36.0",
             "transformer": ["diffusers", dit_class], "vae": ["diffusers", fam.vae["_class_name"]]}
    files = {"model_index.json": index,
             "transformer/config.json": config, "vae/config.json": fam.vae}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def families_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("families"))


def test_every_dit_class_is_read_or_excluded_with_a_reason():
    from sglang_autoperf.sglang_adapter.models import dit_classes

    registered = set(dit_classes())
    read = set(BUILT) | set(PUBLISHED) | set(BUILT_FROM_SGLANG)
    assert not read & set(EXCLUDED)
    missing = registered - read - set(EXCLUDED)
    assert not missing, f"sglang registers DiT classes the coverage table does not list: {sorted(missing)}"
    assert not (read | set(EXCLUDED)) - registered, "listed classes sglang no longer registers"


@pytest.mark.parametrize("dit_class", sorted(c for c, why in EXCLUDED.items() if why in (_NO_LISTS, _COMPUTED)))
def test_excluded_for_their_layer_names_really_are(dit_class):
    """The reason is sglang's class itself: no layer_names declared, or computed at construction."""
    from sglang_autoperf.sglang_adapter.models import declared_layer_names, dit_class as load

    assert declared_layer_names(load(dit_class)) == ()


@pytest.mark.parametrize("dit_class", sorted(BUILT))
def test_probe_reads_and_plans(dit_class, families_root):
    from sglang_autoperf.plan.planner import make_plan

    fam = BUILT[dit_class]
    model = probe_model(built_folder(dit_class, families_root))
    assert model.dit.sglang_class == dit_class
    assert tuple(g.name for g in model.dit.block_groups) == fam.lists
    assert model.dit.dtype == "bfloat16" and model.dit.num_layers >= 2
    w, h = (832, 480) if model.is_video else (1024, 1024)
    workload = workload_for(model, w, h, num_frames=33 if model.is_video else 1)
    plan = make_plan(h100(), model, workload, {}, {}, 40 * GiB)
    assert plan.dit.total_layers == model.dit.num_layers


@pytest.mark.parametrize("dit_class", sorted(PUBLISHED))
def test_published_fixtures_read_and_plan(dit_class):
    from sglang_autoperf.plan.planner import make_plan

    model = probe_model(FIXTURES / PUBLISHED[dit_class])
    assert model.dit.sglang_class == dit_class
    plan = make_plan(h100(), model, workload_for(model, 1024, 1024), {}, {}, 40 * GiB)
    assert plan.dit.total_layers == model.dit.num_layers


@pytest.mark.parametrize("dit_class", sorted(BUILT))
def test_block_bytes_match_the_module_per_block(dit_class, families_root):
    """Each block's bytes against an independent count: the module diffusers builds from the same
    config, summed per block by module path (not by tensor name, not through sglang's name mapping)."""
    import diffusers
    import torch

    folder = built_folder(dit_class, families_root)
    model = probe_model(folder)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        module = getattr(diffusers, dit_class).from_config(config)
    for group in model.dit.block_groups:
        assert group.count == len(module.get_submodule(group.name))
        want = [2 * sum(p.numel() for p in module.get_submodule(f"{group.name}.{i}").parameters())
                for i in range(group.count)]
        assert list(group.block_bytes) == want, (dit_class, group.name)
    # everything the checkpoint holds: parameters and persistent buffers (SD3's pos_embed)
    assert model.dit.total_bytes == 2 * sum(t.numel() for t in module.state_dict().values())


def _vae_stand_in(model_id: str, dit_latents: int) -> dict:
    """A VAE config with the latent geometry of sglang's VAE config for `model_id` (channels, spatial and
    temporal compression); the class is diffusers' Wan VAE as a stand-in (the probe builds it on the
    meta device for its bytes: those are the stand-in's, not the family's). Where sglang's VAE config
    names no channel count (Nomas, Kandinsky-6 SR), the DiT's own latent channels."""
    vae = sglang_dit_folders.pipeline_config(model_id).vae_config.arch_config
    channels = next((v for v in (getattr(vae, k, None) for k in ("z_dim", "latent_channels"))
                     if isinstance(v, int) and v > 0), dit_latents)
    spatial = getattr(vae, "scale_factor_spatial", None) or vae.spatial_compression_ratio
    temporal = getattr(vae, "scale_factor_temporal", None) or vae.temporal_compression_ratio
    return dict(WAN_VAE, z_dim=channels, scale_factor_spatial=spatial, scale_factor_temporal=temporal)


@dataclasses.dataclass(frozen=True)
class BuiltFromSglang:
    folder: Path
    module: object  # sglang's DiT on the meta device, as its loader builds it from the folder's config


@pytest.fixture(scope="module")
def sglang_world(demo_model):
    with sglang_dit_folders.sglang_cpu_world(demo_model):
        yield


@pytest.fixture(scope="module")
def sglang_folders(sglang_world, tmp_path_factory) -> dict[str, BuiltFromSglang]:
    root = tmp_path_factory.mktemp("sglang-families")
    out = {}
    for dit_class, fam in BUILT_FROM_SGLANG.items():
        config = {**sglang_dit_folders.arch_config_json(fam.model_id), **dict(fam.contract)}
        module = sglang_dit_folders.build_sglang_dit(fam.model_id, dit_class, config)
        folder = root / dit_class / fam.model_id.rsplit("/", 1)[-1]
        vae = _vae_stand_in(fam.model_id, config.get("num_channels_latents") or 16)
        out[dit_class] = BuiltFromSglang(
            sglang_dit_folders.write_sglang_folder(folder, fam.pipeline, dit_class, config, module, vae), module)
    return out


# The excluded classes sglang itself refuses to build from its registered defaults: the model id, what
# the config is given (the contract fields sglang asks for first), and sglang's error.
REFUSED_BUILDS = {
    "Cosmos3MultiviewTransformer": ("nvidia/Cosmos3-Nano-Transfer-Auto", {"backbone_type": "cosmos3_multiview"},
                                    "must contain a 'multiview' object"),
    "Cosmos3SimAutoTransformer": ("nvidia/Cosmos3-Nano-Sim-Auto", {"backbone_type": "cosmos3_multiview"},
                                  "requires transformer/config.json['cosmos3_nano_sim_auto']"),
    "CosmosDreamsTransformer": ("nvidia/Cosmos3-Nano-Sim-Bimanual", {},
                                "requires a schema-v1 artifact under transformer/config.json['cosmos3_nano_sim_bimanual']"),
    "SanaWMLTX2VideoRefiner": ("Efficient-Large-Model/SANA-WM_bidirectional", {}, "timestep_scale_multiplier"),
}


@pytest.mark.parametrize("dit_class", sorted(REFUSED_BUILDS))
def test_excluded_because_sglang_refuses_to_build_them(dit_class, sglang_world):
    model_id, extra, error = REFUSED_BUILDS[dit_class]
    assert error in EXCLUDED[dit_class]
    config = {**sglang_dit_folders.arch_config_json(model_id), **extra}
    with pytest.raises((ValueError, AttributeError), match=re.escape(error)):
        sglang_dit_folders.build_sglang_dit(model_id, dit_class, config)


@pytest.mark.parametrize("dit_class", sorted(BUILT_FROM_SGLANG))
def test_probe_reads_and_plans_sglang_built(dit_class, sglang_folders):
    """Read from the safetensors header alone: sglang's class, its lists in the order the built module
    streams them (its layer_names attribute, not the source the probe reads it from), and a plan."""
    from sglang_autoperf.plan.planner import make_plan

    built = sglang_folders[dit_class]
    model = probe_model(built.folder)
    assert model.dit.sglang_class == dit_class
    assert model.components["transformer"].source == "weights"
    assert tuple(g.name for g in model.dit.block_groups) == tuple(built.module.layer_names)
    # sglang's precision for the family (Hunyuan3D-2 runs its DiT in fp16)
    precision = sglang_dit_folders.pipeline_config(BUILT_FROM_SGLANG[dit_class].model_id).dit_precision
    assert model.dit.dtype == {"bf16": "bfloat16", "fp16": "float16"}[precision] and model.dit.num_layers >= 2
    w, h = (832, 480) if model.is_video else (1024, 1024)
    workload = workload_for(model, w, h, num_frames=33 if model.is_video else 1)
    plan = make_plan(h100(), model, workload, {}, {}, 40 * GiB)
    assert plan.dit.total_layers == model.dit.num_layers


def _runtime_bytes(t) -> int:
    # sglang runs these DiTs in bf16 or fp16: floating weights take 2 bytes; fp8 (Ideogram-4's
    # quantized linears) and integer buffers keep their own size
    return t.numel() * (2 if t.dtype.is_floating_point and t.element_size() >= 2 else t.element_size())


@pytest.mark.parametrize("dit_class", sorted(BUILT_FROM_SGLANG))
def test_sglang_built_block_bytes_match_the_module_per_block(dit_class, sglang_folders):
    """Each block's bytes against the module sglang built, summed per block by module path (not by
    the header's tensor names, not through sglang's name mapping)."""
    built = sglang_folders[dit_class]
    model = probe_model(built.folder)
    for group in model.dit.block_groups:
        blocks = built.module.get_submodule(group.name)
        assert group.count == len(blocks)
        want = [sum(_runtime_bytes(t) for t in blocks[i].state_dict().values()) for i in range(group.count)]
        assert list(group.block_bytes) == want, (dit_class, group.name)


@pytest.mark.parametrize("dit_class", sorted(BUILT_FROM_SGLANG))
def test_sglang_mapping_leaves_module_names_in_their_block(dit_class, sglang_folders):
    """The header holds sglang's module names; the probe maps names through the class's
    param_names_mapping before matching. That mapping must leave a module name in the block it names,
    or the probe would be matching names a checkpoint of that family never has."""
    from sglang_autoperf.probe.model import read_safetensors_header
    from sglang_autoperf.sglang_adapter.models import dit_layout, layer_index_pattern, resolve_model

    folder = sglang_folders[dit_class].folder
    index = json.loads((folder / "model_index.json").read_text())
    config = json.loads((folder / "transformer" / "config.json").read_text())
    layout = dit_layout(resolve_model(str(folder), index["_class_name"]), "transformer", config)
    header = read_safetensors_header(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    for name in header:
        for layer_name in layout.layer_names:
            m = layer_index_pattern(layer_name).match(name)
            if m:
                moved = layer_index_pattern(layer_name).match(layout.to_sglang_name(name))
                assert moved and moved.group(1) == m.group(1), (name, layout.to_sglang_name(name))
                break


def test_mova_towers_are_components_the_probe_does_not_read():
    """MOVA's reason: its pipeline asks for video_dit / video_dit_2 / audio_dit, none a DiT component of ours."""
    from sglang.multimodal_gen.registry import get_pipeline_class
    from sglang_autoperf.sglang_adapter.models import DIT_COMPONENTS

    modules = set(get_pipeline_class("MOVAPipeline")._required_config_modules)
    assert {"video_dit", "video_dit_2", "audio_dit"} <= modules and not modules & set(DIT_COMPONENTS)
    assert all("MOVA" in EXCLUDED[c] for c in ("WanModel", "WanAudioModel"))


def test_sglang_built_header_is_valid_safetensors(sglang_folders):
    """The sparse file is one safetensors itself opens (names, dtypes and shapes as the module has them),
    and it takes no disk for its data."""
    import os

    from safetensors import safe_open

    built = sglang_folders["Hunyuan3D2DiT"]
    path = built.folder / "transformer" / "diffusion_pytorch_model.safetensors"
    want = sglang_dit_folders.checkpoint_tensors(built.module)
    with safe_open(str(path), framework="pt") as f:
        got = {name: (f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape())) for name in f.keys()}
    assert got == want
    assert os.stat(path).st_size > 2 * 10**9 > os.stat(path).st_blocks * 512  # a 1.1B-parameter DiT's header


# Families whose checkpoints carry a prefix sglang's param_names_mapping strips first (its rules
# `^model\.(.*)$` and `^model\.diffusion_model\.(.*)$`): the one rule whose inverse is unambiguous.
CHECKPOINT_PREFIXES = {"Hunyuan3D2DiT": "model.", "MiniMaxH3DiTModel": "model.diffusion_model."}


@pytest.mark.parametrize("dit_class", sorted(CHECKPOINT_PREFIXES))
def test_checkpoint_names_reach_their_blocks_through_sglang_mapping(dit_class, sglang_folders, tmp_path):
    """A header under the checkpoint's prefixed names matches no layer name as written; the probe's
    blocks come from sglang's mapping, and are the same as under the module's own names."""
    import shutil

    built = sglang_folders[dit_class]
    folder = tmp_path / built.folder.name
    shutil.copytree(built.folder, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    prefix = CHECKPOINT_PREFIXES[dit_class]
    tensors = {prefix + name: t for name, t in sglang_dit_folders.checkpoint_tensors(built.module).items()}
    sglang_dit_folders.write_sparse_safetensors(folder / "transformer" / "diffusion_pytorch_model.safetensors",
                                                tensors)
    want = probe_model(built.folder).dit
    got = probe_model(folder).dit
    assert [(g.name, g.block_bytes) for g in got.block_groups] == [(g.name, g.block_bytes) for g in want.block_groups]
    assert got.total_bytes == want.total_bytes
