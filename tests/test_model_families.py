"""Every DiT class sglang 0.5.23 registers: the probe reads it and the planner plans it, or it is listed
here as excluded with its reason (the README's coverage table says the same).

Folders are config-only, built in the test: the DiT's config.json holds sglang's own arch-config
defaults (its PipelineConfig.dit_config), the folder is named like the model id sglang registers for
that family (so sglang's registry resolves it natively, as it would a downloaded checkpoint), and the
probe builds the diffusers class on the meta device: no weights, no download.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path

import pytest

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
_NO_LISTS = "declares no layer_names: sglang's layerwise offload cannot stream it, nothing to place"
_COMPUTED = "computes layer_names from the built module (not readable from files alone)"
_NO_FOLDER = ("no diffusers class in the sandbox to build a config-only folder from, and no published "
              "safetensors header here; the probe reads it once a checkpoint's header is present")
EXCLUDED = {
    "HunyuanImage3ForCausalMM": _NO_LISTS, "SanaVideo2Transformer3DModel": _NO_LISTS,
    "GlmImageTransformer2DModel": _NO_LISTS, "LLaDAImageTransformer2DModel": _NO_LISTS,
    "LLaDAImageQueryFormerModel": "an LLaDA-Image helper module, not a DiT; " + _NO_LISTS,
    "LLaDAImageSigVQModel": "an LLaDA-Image tokenizer (VQ), not a DiT; " + _NO_LISTS,
    "LLaDAImageTextProjectionModel": "an LLaDA-Image projection, not a DiT; " + _NO_LISTS,
    "Flux3ImageDiT": _COMPUTED, "Kandinsky6Transformer3DModel": _COMPUTED,
    "Hunyuan3DPaintUNet": "a UNet texture painter (Hunyuan3D paint stage); " + _NO_FOLDER,
    "StableDiffusionUNet2DConditionModel": "a UNet (SD 1.x/2.x), not a DiT; " + _NO_FOLDER,
    **{name: _NO_FOLDER for name in (
        "AnimaTransformer3DModel", "CausalLingBotWorldTransformer3DModel", "CausalWanTransformer3DModel",
        "Cosmos3MultiviewTransformer", "Cosmos3OmniTransformer", "Cosmos3SimAutoTransformer",
        "CosmosDreamsTransformer", "ErnieImageTransformer2DModel", "Flux3Transformer", "Hunyuan3D2DiT",
        "Ideogram4Transformer2DModel", "JoyImageEditTransformer3DModel", "JoyTransformer3DModel",
        "Kandinsky6SRTransformer3DModel", "Krea2Transformer2DModel", "LingBotVideoTransformer3DModel",
        "LingBotWorldTransformer3DModel", "LongLive2Transformer3DModel", "MOSSImageTransformer",
        "MingImageTransformer2DModel", "MiniMaxH3DiTModel", "NomasTransformer3DModel",
        "QwenImage21Transformer2DModel", "SanaWMLTX2VideoRefiner", "SanaWMTransformer3DModel",
        "WanAnimate2Transformer3DModel", "WanAudioModel", "WanModel")},
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
    read = set(BUILT) | set(PUBLISHED)
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
