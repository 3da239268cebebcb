"""sglang_models against the real sglang 0.5.23: layer_names as sglang's classes declare them, the
registry's resolution (model ids, Hugging Face cache paths, --model-id) and the diffusers-backend gate."""
from __future__ import annotations

import pytest

from sglang_autoperf.sglang_adapter import models as sm

pytest.importorskip("sglang.multimodal_gen.registry")


@pytest.mark.parametrize("dit_class, lists", [
    ("SD3Transformer2DModel", ("transformer_blocks",)),  # a class attribute
    ("WanTransformer3DModel", ("blocks",)),  # self.layer_names = [...] in __init__
    ("MiniMaxH3DiTModel", ("blocks", "token_refiner.blocks")),  # a nested list, in execution order
    ("Kandinsky6SRTransformer3DModel", ("visual_transformer_blocks",)),  # list(_BLOCK_CONTAINERS)
    ("MingImageTransformer2DModel", ("noise_refiner", "context_refiner", "layers")),  # its own, not Z-Image's
    ("LongLive2Transformer3DModel", ("blocks",)),  # inherited from CausalWanTransformer3DModel.__init__
])
def test_declared_layer_names(dit_class, lists):
    """Each expectation read by hand from the class's source in sglang 0.5.23."""
    assert sm.declared_layer_names(sm.dit_class(dit_class)) == lists


def test_every_registered_dit_class_gives_strings_or_nothing():
    for name in sm.dit_classes():
        names = sm.declared_layer_names(sm.dit_class(name))
        assert isinstance(names, tuple) and all(isinstance(n, str) and n for n in names), name


def test_layer_index_pattern_is_anchored_and_literal():
    p = sm.layer_index_pattern("token_refiner.blocks")
    assert p.match("token_refiner.blocks.3.attn.qkv.weight").group(1) == "3"
    assert p.match("blocks.3.attn.weight") is None
    assert p.match("token_refinerXblocks.3.attn.weight") is None  # the dot is literal
    assert sm.layer_index_pattern("blocks").match("double_blocks.0.x") is None


def test_resolution_follows_sglang_registry():
    flux = sm.resolve_model("/models/FLUX.1-dev", "FluxPipeline")
    assert (flux.native, flux.family, flux.sampling_class) == (True, "flux", "FluxSamplingParams")
    assert flux.default_steps == 50
    # a Hugging Face cache snapshot: the folder is a hash, the repo is in the path (sglang's step 2b)
    cached = sm.resolve_model("/hf/models--Tongyi-MAI--Z-Image-Turbo/snapshots/0123abcd", "ZImagePipeline")
    assert (cached.family, cached.sampling_class) == ("zimage", "ZImageTurboSamplingParams")
    # --model-id wins over the folder name
    chosen = sm.resolve_model("/models/my-model", "ZImagePipeline", model_id="Z-Image")
    assert chosen.sampling_class == "ZImageSamplingParams"


def test_diffusers_backend_gate():
    assert sm.resolve_model("/models/FLUX.1-dev", "FluxPipeline", backend="diffusers").native is False
    quantized = sm.resolve_model("/models/FLUX.1-dev-4bit", "FluxPipeline")
    assert not quantized.native and "quantized" in quantized.backend_reason
    unknown = sm.resolve_model("/models/x", "NoSuchPipeline")
    assert not unknown.native and unknown.backend_reason.startswith("sglang runs NoSuchPipeline with its diffusers")


def test_every_registered_model_id_resolves_to_plain_data():
    """Each model id sglang 0.5.23 registers resolves without an error, with positive steps and a task
    (FLUX.3's sampling classes leave the steps to their pipeline: the nominal 50 then)."""
    registry = sm._registry()
    for hf_id in registry._MODEL_HF_PATH_TO_NAME:
        short = hf_id.rstrip("/").split("/")[-1]
        m = sm.resolve_model(f"/models/{short}", "WanPipeline")  # any native pipeline: ids pick the configs
        assert m.native and m.default_steps > 0 and m.task and m.family, hf_id
        assert m.dit_precision in ("bf16", "fp16", "fp32"), (hf_id, m.dit_precision)


@pytest.mark.parametrize("folder, index_class, dit_class, channels_field", [
    ("/models/MOSS-Image-Base", "MOSSImagePipeline", "MOSSImageTransformer", "latent_channels"),
    ("/models/MiniMax-H3", "MiniMaxH3Pipeline", "MiniMaxH3DiTModel", "latents_dim"),
])
def test_input_channels_of_families_that_name_them_otherwise(folder, index_class, dit_class, channels_field):
    """sglang's arch configs of MOSS-Image and MiniMax-H3 have no in_channels (None); the DiT's input
    channels are the field their DiT builds its input projection from."""
    model = sm.resolve_model(folder, index_class)
    layout = sm.dit_layout(model, "transformer", {"_class_name": dit_class})
    arch = model.pipeline_config.dit_config.arch_config
    assert getattr(arch, "in_channels", None) is None
    assert layout.arch_geometry["in_channels"] == getattr(arch, channels_field) > 0


def test_a_family_in_channels_wins_over_its_latent_channels():
    """LongCat-Image packs 2x2 latents: its DiT takes in_channels=64 from 16 latent channels."""
    model = sm.resolve_model("/models/LongCat-Image", "LongCatImagePipeline")
    layout = sm.dit_layout(model, "transformer", {"_class_name": "LongCatImageTransformer2DModel"})
    arch = model.pipeline_config.dit_config.arch_config
    assert (arch.in_channels, arch.num_channels_latents) == (64, 16)
    assert layout.arch_geometry["in_channels"] == 64
