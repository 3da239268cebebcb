"""ModelProfile probe: real diffusers checkpoints (tiny), published configs (exact bytes), bad input."""
from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import pytest

from sglang_autoperf.probe.model import (
    ModelProbeError,
    NotNativeError,
    format_model_table,
    model_profile_to_dict,
    probe_model,
    read_safetensors_header,
)

FIXTURES = Path(__file__).parent / "fixtures" / "models"
BF16 = 2


# ---- tiny real checkpoints -------------------------------------------------------------------

def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _wan_tiny(root: Path, shard: str | None = None):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    dit = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads")
    kw = {"max_shard_size": shard} if shard else {}
    dit.save_pretrained(root / "transformer", safe_serialization=True, **kw)
    _write_json(root / "model_index.json", {
        "_class_name": "WanPipeline", "_diffusers_version": "0.35.0",
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "tokenizer": ["transformers", "T5TokenizerFast"]})
    # config-only VAE: built on the meta device by the probe
    _write_json(root / "vae" / "config.json", {
        "_class_name": "AutoencoderKLWan", "base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1, "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
        "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4})
    return dit


def _flux_tiny(root: Path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    dit = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4))
    dit.save_pretrained(root / "transformer", safe_serialization=True)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    _write_json(root / "model_index.json", {
        "_class_name": "FluxPipeline", "_diffusers_version": "0.35.0",
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})
    return dit, vae


def _block_bytes(module, prefix: str, n: int, itemsize: int = BF16) -> list[int]:
    """Run-time bytes of each block, from the loaded module itself."""
    out = []
    for i in range(n):
        block = module.get_submodule(f"{prefix}.{i}")
        out.append(sum(p.numel() * itemsize for p in block.parameters()))
    return out


def test_wan_tiny_checkpoint(tmp_path):
    dit = _wan_tiny(tmp_path / "wan")
    prof = probe_model(tmp_path / "wan")
    assert (prof.family, prof.task, prof.is_video) == ("wan", "text-to-video", True)
    d = prof.dit
    assert [g.name for g in d.block_groups] == ["blocks"]
    assert list(d.layer_bytes) == _block_bytes(dit, "blocks", 3)
    total = sum(p.numel() * BF16 for p in dit.parameters())
    assert d.total_bytes == total
    assert d.non_block_bytes == total - sum(d.layer_bytes)
    assert (d.hidden_size, d.num_heads, d.head_dim, d.patch_size, d.in_channels) == (16, 2, 8, (1, 2, 2), 4)
    assert d.dtype == "bfloat16"
    assert prof.components["transformer"].source == "weights"
    assert prof.components["vae"].source == "config"
    assert prof.components["vae"].dtype == "float32"  # sglang runs the Wan VAE in fp32
    assert (prof.vae_spatial_compression, prof.vae_temporal_compression, prof.latent_channels) == (8, 4, 4)
    assert prof.cfg_default is True


def test_wan_tiny_sharded_matches_single_file(tmp_path):
    _wan_tiny(tmp_path / "single")
    _wan_tiny(tmp_path / "sharded", shard="20KB")
    assert list((tmp_path / "sharded" / "transformer").glob("*.safetensors.index.json"))
    a, b = probe_model(tmp_path / "single"), probe_model(tmp_path / "sharded")
    assert a.dit == b.dit
    assert a.fingerprint == b.fingerprint


def test_flux_tiny_checkpoint(tmp_path):
    # named like a FLUX.1 checkpoint: sglang's FLUX.1 detector matches "flux.1" in the path, and a
    # folder it does not recognise runs on its diffusers backend (test_native_backend_gate)
    dit, vae = _flux_tiny(tmp_path / "FLUX.1-tiny")
    prof = probe_model(tmp_path / "FLUX.1-tiny")
    d = prof.dit
    assert [(g.name, g.count) for g in d.block_groups] == [("transformer_blocks", 2), ("single_transformer_blocks", 3)]
    assert list(d.layer_bytes) == (_block_bytes(dit, "transformer_blocks", 2)
                                   + _block_bytes(dit, "single_transformer_blocks", 3))
    assert d.num_layers == 5
    assert d.patch_size == (2, 2)  # 2x2 latent packing into 16 = 4*4 channels
    assert prof.components["vae"].bytes == sum(p.numel() * BF16 for p in vae.parameters())
    assert prof.cfg_default is False and prof.default_guidance_scale == 3.5


def test_header_reader_reads_no_tensor_data(tmp_path, monkeypatch):
    _wan_tiny(tmp_path / "wan")
    f = next((tmp_path / "wan" / "transformer").glob("*.safetensors"))
    import builtins
    real_open = builtins.open
    read_sizes = []

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            read_sizes.append(n)
            return self.fh.read(n)

        def fileno(self):  # the reader checks the opened file is a regular one
            return self.fh.fileno()

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    monkeypatch.setattr(builtins, "open", lambda p, m="r", *a, **k: Spy(real_open(p, m, *a, **k)) if str(p) == str(f) else real_open(p, m, *a, **k))
    hdr = read_safetensors_header(f)
    monkeypatch.undo()
    assert hdr and read_sizes[0] == 8
    (n,) = struct.unpack("<Q", f.read_bytes()[:8])
    assert read_sizes == [8, n]


# ---- published configs (config-only, exact bytes) ---------------------------------------------

def _wan_block_params(d: int, ffn: int) -> int:
    attn = 4 * (d * d + d) + 2 * d  # q, k, v, o + rms norm_q / norm_k across heads
    return 2 * attn + 2 * d + (d * ffn + ffn + ffn * d + d) + 6 * d  # self, cross, norm2, ffn, modulation


def _mmdit_double_params(d: int, head_dim: int) -> int:
    ada = 2 * (6 * d * d + 6 * d)  # AdaLayerNormZero for image and text streams
    attn = 8 * (d * d + d) + 4 * head_dim  # q,k,v,o for both streams + 4 rms norms
    ff = 2 * ((4 * d * d + 4 * d) + (4 * d * d + d))
    return ada + attn + ff


def _mmdit_single_params(d: int, head_dim: int) -> int:
    return (3 * d * d + 3 * d) + (4 * d * d + 4 * d) + 3 * (d * d + d) + 2 * head_dim + (5 * d * d + d)


def test_wan21_t2v_14b():
    p = probe_model(FIXTURES / "Wan2.1-T2V-14B-Diffusers")
    assert p.dit.num_layers == 40
    assert set(p.dit.layer_bytes) == {702_788_608}
    assert _wan_block_params(5120, 13824) * BF16 == 702_788_608
    assert p.components["transformer"].source == "config"
    assert p.default_guidance_scale == 5.0 and p.default_steps == 50 and p.cfg_default
    assert (p.vae_spatial_compression, p.vae_temporal_compression, p.latent_channels) == (8, 4, 16)
    assert p.components["vae"].dtype == "float32"


def test_flux1_dev():
    p = probe_model(FIXTURES / "FLUX.1-dev")
    assert [(g.name, g.count) for g in p.dit.block_groups] == [("transformer_blocks", 19), ("single_transformer_blocks", 38)]
    assert p.dit.num_layers == 57
    assert p.dit.layer_bytes[:19] == (679_662_592,) * 19
    assert p.dit.layer_bytes[19:] == (283_183_616,) * 38
    assert (p.dit.hidden_size, p.dit.num_heads, p.dit.head_dim, p.dit.patch_size) == (3072, 24, 128, (2, 2))
    assert (p.task, p.cfg_default, p.default_guidance_scale) == ("text-to-image", False, 3.5)
    assert (p.vae_spatial_compression, p.vae_temporal_compression, p.latent_channels) == (8, 1, 16)


def test_qwen_image():
    p = probe_model(FIXTURES / "Qwen-Image")
    assert p.dit.num_layers == 60 and set(p.dit.layer_bytes) == {679_662_592}
    assert [g.name for g in p.dit.block_groups] == ["transformer_blocks"]
    assert p.cfg_default and p.default_guidance_scale == 4.0


def test_wan22_two_experts():
    p = probe_model(FIXTURES / "Wan2.2-T2V-A14B-Diffusers")
    assert set(p.dits) == {"transformer", "transformer_2"}
    expected = _wan_block_params(5120, 13824) * BF16  # by hand from the config shapes
    for d in p.dits.values():
        assert d.num_layers == 40 and set(d.layer_bytes) == {expected}
    assert p.dit is p.dits["transformer"]
    assert (p.default_guidance_scale, p.default_steps) == (4.0, 40)
    out = model_profile_to_dict(p)
    assert set(out["dits"]) == {"transformer", "transformer_2"}
    assert out["dits"]["transformer_2"]["num_layers"] == 40


def test_hunyuan_video():
    p = probe_model(FIXTURES / "HunyuanVideo")
    # sglang's names for the two lists (its HunyuanVideoTransformer3DModel.layer_names; the checkpoint
    # says transformer_blocks / single_transformer_blocks, which the old hand table used): sglang wins,
    # since its layerwise offload manager is what streams them.
    assert [(g.name, g.count) for g in p.dit.block_groups] == [("double_blocks", 20), ("single_blocks", 40)]
    assert set(p.dit.layer_bytes[:20]) == {_mmdit_double_params(3072, 128) * BF16}
    assert set(p.dit.layer_bytes[20:]) == {_mmdit_single_params(3072, 128) * BF16}
    assert p.dit.patch_size == (1, 2, 2)
    assert (p.vae_spatial_compression, p.vae_temporal_compression) == (8, 4)
    assert p.components["vae"].dtype == "float16"
    assert not p.cfg_default


def test_serialisation_and_table():
    p = probe_model(FIXTURES / "FLUX.1-dev")
    out = json.loads(json.dumps(model_profile_to_dict(p)))
    assert out["task"] == "text-to-image"
    assert out["dit"]["num_layers"] == 57 and len(out["dit"]["layer_bytes"]) == 57
    assert out["components"]["transformer"]["bytes"] == p.dit.total_bytes
    assert out["dits"]["transformer"]["layer_bytes"] == out["dit"]["layer_bytes"]
    table = format_model_table(p)
    assert "single_transformer_blocks" in table and "38 x" in table


# ---- fingerprint ------------------------------------------------------------------------------

def test_fingerprint(tmp_path):
    src = FIXTURES / "Wan2.1-T2V-14B-Diffusers"
    a = probe_model(src).fingerprint
    assert probe_model(src).fingerprint == a
    copy = shutil.copytree(src, tmp_path / "elsewhere")
    assert probe_model(copy).fingerprint == a
    cfg = copy / "transformer" / "config.json"
    data = json.loads(cfg.read_text())
    data["ffn_dim"] = 13312  # a shape change
    cfg.write_text(json.dumps(data))
    assert probe_model(copy).fingerprint != a
    data["ffn_dim"] = 13824
    data["eps"] = 1e-5  # a config value that changes no shape
    cfg.write_text(json.dumps(data))
    assert probe_model(copy).fingerprint != a


def test_fingerprint_tensor_shape(tmp_path):
    _wan_tiny(tmp_path / "a")
    a = probe_model(tmp_path / "a").fingerprint
    f = next((tmp_path / "a" / "transformer").glob("*.safetensors"))
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k.endswith("scale_shift_table") and k.startswith("blocks.0"))
    header[name]["shape"] = header[name]["shape"][::-1]  # same bytes, new shape
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    assert probe_model(tmp_path / "a").fingerprint != a


# ---- bad input --------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(ModelProbeError, match="no-such"):
        probe_model(tmp_path / "no-such")


def test_not_diffusers(tmp_path):
    with pytest.raises(ModelProbeError, match="model_index.json"):
        probe_model(tmp_path)
    _write_json(tmp_path / "model_index.json", {"_class_name": "WanPipeline"})
    with pytest.raises(ModelProbeError, match=r"model_index\.json.*_diffusers_version"):
        probe_model(tmp_path)


def test_corrupt_json(tmp_path):
    m = shutil.copytree(FIXTURES / "Qwen-Image", tmp_path / "m")
    (m / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(ModelProbeError, match=r"transformer.config\.json.*not valid JSON"):
        probe_model(m)


def test_unknown_family(tmp_path):
    _write_json(tmp_path / "model_index.json", {"_class_name": "FancyNewPipeline", "_diffusers_version": "0.35.0"})
    with pytest.raises(ModelProbeError, match=r"model_index\.json.*FancyNewPipeline"):
        probe_model(tmp_path)


def _gate(exc) -> tuple[bool, str]:
    message = str(exc.value)
    assert "\n" not in message and "diffusers backend" in message and "no layerwise offload" in message
    return exc.value.resolved.native, exc.value.resolved.backend_reason


def test_native_backend_gate(tmp_path):
    """sglang's get_model_info sends these to its diffusers backend; the probe says so in one line and
    carries sglang's answer as data."""
    _write_json(tmp_path / "model_index.json", {"_class_name": "FancyNewPipeline", "_diffusers_version": "0.35.0"})
    with pytest.raises(NotNativeError) as exc:
        probe_model(tmp_path)
    assert _gate(exc) == (False, "sglang runs FancyNewPipeline with its diffusers backend (no native pipeline of "
                                 "that name), which has no layerwise offload to plan")
    with pytest.raises(NotNativeError) as exc:
        probe_model(FIXTURES / "FLUX.1-dev", backend="diffusers")  # sglang's --backend diffusers
    assert "--backend diffusers" in _gate(exc)[1]
    quantized = shutil.copytree(FIXTURES / "FLUX.1-dev", tmp_path / "FLUX.1-dev-4bit")
    with pytest.raises(NotNativeError) as exc:
        probe_model(quantized)
    assert "quantized" in _gate(exc)[1]


def test_model_id_picks_sglang_config(tmp_path):
    """sglang's --model-id overrides the folder name: a Wan2.1 folder probed as Wan2.2-T2V-A14B gets that
    model's sampling class (40 steps, guidance 4.0)."""
    plain = shutil.copytree(FIXTURES / "Wan2.1-T2V-14B-Diffusers", tmp_path / "my-wan")
    assert probe_model(plain).default_steps == 50
    p = probe_model(plain, model_id="Wan2.2-T2V-A14B-Diffusers")
    assert (p.sampling_class, p.default_steps, p.default_guidance_scale) == ("Wan2_2_T2V_A14B_SamplingParam", 40, 4.0)


def _safetensors(tmp_path):
    _wan_tiny(tmp_path / "m")
    return tmp_path / "m", next((tmp_path / "m" / "transformer").glob("*.safetensors"))


def test_corrupt_header_length(tmp_path):
    m, f = _safetensors(tmp_path)
    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    with pytest.raises(ModelProbeError, match=rf"{f.name}.*header length"):
        probe_model(m)


def test_corrupt_header_json(tmp_path):
    m, f = _safetensors(tmp_path)
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    f.write_bytes(raw[:8] + b"!" * n + raw[8 + n:])
    with pytest.raises(ModelProbeError, match=rf"{f.name}.*not valid JSON"):
        probe_model(m)


def test_truncated_file(tmp_path):
    m, f = _safetensors(tmp_path)
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ModelProbeError, match=rf"{f.name}.*truncated"):
        probe_model(m)
    f.write_bytes(raw[:5])
    with pytest.raises(ModelProbeError, match=f.name):
        probe_model(m)


def test_hugging_face_cache_layout_is_inside_the_model(tmp_path):
    """The hub cache links every file of snapshots/<rev>/ into blobs/, outside the model folder:
    only folders (and shard names) are confined, so such a snapshot still probes."""
    _wan_tiny(tmp_path / "plain", shard="20KB")
    snap = shutil.copytree(tmp_path / "plain", tmp_path / "hub" / "snapshots" / "rev")
    blobs = tmp_path / "hub" / "blobs"
    blobs.mkdir()
    for i, f in enumerate(sorted(p for p in snap.rglob("*") if p.is_file())):
        f.rename(blobs / f"blob{i}")
        f.symlink_to(blobs / f"blob{i}")
    a, b = probe_model(tmp_path / "plain"), probe_model(snap)
    assert b.dit == a.dit and b.fingerprint == a.fingerprint


def test_sub_byte_dtypes_count_their_packed_bytes(tmp_path):
    m, f = _safetensors(tmp_path)
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    header["packed"] = {"dtype": "F4", "shape": [3, 8], "data_offsets": [end, end + 12]}  # 24 x 4 bits
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:] + bytes(12))
    before = probe_model(m)
    assert read_safetensors_header(f)["packed"].shape == (3, 8)
    del header["packed"]
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    assert before.components["transformer"].bytes - probe_model(m).components["transformer"].bytes == 12


# ---- the hand tables the probe used before it read sglang: a cross-check ------------------------
# Written by hand from sglang 0.5.23's configs/sample/{wan,flux,qwenimage,hunyuan}.py and
# pipeline_configs/{wan,flux,qwen_image,hunyuan}.py. The probe now reads sglang itself; where the
# two disagree sglang wins, and the test names the disagreement.

@dataclasses.dataclass(frozen=True)
class HandRow:
    sampling_class: str
    guidance_scale: float
    steps: int
    cfg: bool  # a second, negative pass by default
    true_cfg: bool  # the old TRUE_CFG_FAMILIES: a guidance scale > 1 adds the negative pass
    precisions: tuple[str, ...]  # dit, vae, text encoders...
    text_tokens: int
    execution_order: tuple[str, ...]


HAND_TABLE = {
    "Wan2.1-T2V-14B-Diffusers": HandRow("WanT2V_14B_SamplingParams", 5.0, 50, True, True, ("bf16", "fp32", "fp32"), 512,
                                        ("blocks",)),
    "Wan2.2-T2V-A14B-Diffusers": HandRow("Wan2_2_T2V_A14B_SamplingParam", 4.0, 40, True, True, ("bf16", "fp32", "fp32"),
                                         512, ("blocks",)),
    "FLUX.1-dev": HandRow("FluxSamplingParams", 3.5, 50, False, False, ("bf16", "bf16", "bf16", "bf16"), 512,
                          ("transformer_blocks", "single_transformer_blocks")),
    "Qwen-Image": HandRow("QwenImageSamplingParams", 4.0, 50, True, True, ("bf16", "bf16", "bf16"), 256,
                          ("transformer_blocks",)),
    "HunyuanVideo": HandRow("HunyuanSamplingParams", 1.0, 50, False, False, ("bf16", "fp16", "fp16", "fp16"), 256,
                            ("transformer_blocks", "single_transformer_blocks")),
}
# Where sglang and the hand table differ, and what sglang says.
SGLANG_WINS = {
    # the Qwen2.5-VL encoder's text_len in sglang's QwenImagePipelineConfig; the table had a nominal prompt
    ("Qwen-Image", "text_tokens"): 512,
    # sglang's HunyuanVideoTransformer3DModel streams its own module names, not the checkpoint's
    ("HunyuanVideo", "execution_order"): ("double_blocks", "single_blocks"),
    # HunyuanSamplingParams keeps a default negative prompt, so sglang's should_use_classifier_free_guidance
    # runs the negative pass once a request sets guidance > 1 (its default, 1.0, does not)
    ("HunyuanVideo", "true_cfg"): True,
}


def _dtype_code(torch_name: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[torch_name]


@pytest.mark.parametrize("name", sorted(HAND_TABLE))
def test_sglang_agrees_with_the_old_hand_table(name):
    p, row = probe_model(FIXTURES / name), HAND_TABLE[name]
    seen = {
        "sampling_class": p.sampling_class, "guidance_scale": p.default_guidance_scale, "steps": p.default_steps,
        "cfg": p.cfg_default, "true_cfg": p.guidance_is_cfg, "text_tokens": p.text_tokens,
        "precisions": tuple(_dtype_code(p.components[c].dtype) for c in
                            ["transformer", "vae", *sorted(c for c in p.components if c.startswith("text_encoder"))]),
        "execution_order": tuple(g.name for g in p.dit.block_groups),
    }
    for key, value in seen.items():
        want = SGLANG_WINS.get((name, key), getattr(row, key))
        assert value == want, (name, key, value, want)


# ---- text encoders of the published configs (config-only, exact parameters) --------------------
# Parameter counts written out from each config's shapes, independent of the probe and of
# transformers; run-time dtype per sglang 0.5.23's text_encoder_precisions (HAND_TABLE above):
# wan fp32, flux bf16 + bf16, qwen_image bf16, hunyuan_video fp16 + fp16.

def _t5_encoder_params(vocab: int, d: int, ff: int, layers: int, heads: int, d_kv: int, buckets: int,
                       bias_every_layer: bool) -> int:
    inner = heads * d_kv
    attn = 4 * d * inner  # q, k, v, o, no biases
    ffn = 2 * d * ff + ff * d  # gated: wi_0, wi_1, wo
    layer = attn + ffn + 2 * d  # + the two T5 layer norms (weight only)
    rel_bias = buckets * heads * (layers if bias_every_layer else 1)  # UMT5: every block; T5: block 0
    return vocab * d + layers * layer + rel_bias + d  # shared embedding (tied to embed_tokens) + final norm


def _clip_text_params(vocab: int, positions: int, d: int, ff: int, layers: int) -> int:
    layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d  # q,k,v,out; fc1, fc2; 2 layer norms
    return vocab * d + positions * d + layers * layer + 2 * d  # token + position embeddings, final norm


def _llama_params(vocab: int, d: int, layers: int, heads: int, kv_heads: int, head_dim: int, ff: int,
                  qkv_bias: bool = False) -> int:
    q, kv = heads * head_dim, kv_heads * head_dim
    attn = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if qkv_bias else 0)
    return vocab * d + layers * (attn + 3 * d * ff + 2 * d) + d  # embeddings, layers, final RMSNorm


def _qwen25_vision_params(depth: int, d: int, ff: int, in_ch: int, patch: int, t_patch: int,
                          merge: int, out: int) -> int:
    patch_embed = d * in_ch * t_patch * patch * patch  # Conv3d, no bias
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * (d * ff + ff) + (ff * d + d)  # 2 RMSNorm, qkv, proj, gate/up/down
    m = d * merge * merge
    merger = d + (m * m + m) + (m * out + out)  # ln_q RMSNorm, mlp Linear(m, m), Linear(m, out)
    return patch_embed + depth * block + merger


UMT5_XXL_PARAMS = _t5_encoder_params(256384, 4096, 10240, 24, 64, 64, 32, bias_every_layer=True)
T5_V1_1_XXL_PARAMS = _t5_encoder_params(32128, 4096, 10240, 24, 64, 64, 32, bias_every_layer=False)
CLIP_L_TEXT_PARAMS = _clip_text_params(49408, 77, 768, 3072, 12)
LLAVA_LLAMA3_8B_TEXT_PARAMS = _llama_params(128320, 4096, 32, 32, 8, 128, 14336)
QWEN25_VL_7B_PARAMS = (
    _llama_params(152064, 3584, 28, 28, 4, 128, 18944, qkv_bias=True) + 152064 * 3584  # + untied lm_head
    + _qwen25_vision_params(32, 1280, 3420, 3, 14, 2, 2, 3584))


def test_text_encoder_param_formulas():
    # the well-known sizes, as a check on the formulas themselves
    assert UMT5_XXL_PARAMS == 5_680_910_336
    assert T5_V1_1_XXL_PARAMS == 4_762_310_656
    assert CLIP_L_TEXT_PARAMS == 123_060_480
    assert LLAVA_LLAMA3_8B_TEXT_PARAMS == 7_505_186_816
    assert QWEN25_VL_7B_PARAMS == 8_292_166_656


def _assert_text_encoder(p, name: str, cls: str, params: int, dtype: str, itemsize: int):
    c = p.components[name]
    assert (c.library, c.class_name, c.source) == ("transformers", cls, "config")
    assert c.params == params, (name, c.params, params)
    assert c.dtype == dtype
    assert c.bytes == params * itemsize


@pytest.mark.parametrize("model", ["Wan2.1-T2V-14B-Diffusers", "Wan2.2-T2V-A14B-Diffusers"])
def test_wan_text_encoder(model):
    p = probe_model(FIXTURES / model)
    _assert_text_encoder(p, "text_encoder", "UMT5EncoderModel", UMT5_XXL_PARAMS, "float32", 4)
    assert "tokenizer" not in p.components


def test_flux1_dev_text_encoders():
    p = probe_model(FIXTURES / "FLUX.1-dev")
    _assert_text_encoder(p, "text_encoder", "CLIPTextModel", CLIP_L_TEXT_PARAMS, "bfloat16", 2)
    _assert_text_encoder(p, "text_encoder_2", "T5EncoderModel", T5_V1_1_XXL_PARAMS, "bfloat16", 2)


def test_qwen_image_text_encoder():
    p = probe_model(FIXTURES / "Qwen-Image")
    _assert_text_encoder(p, "text_encoder", "Qwen2_5_VLForConditionalGeneration", QWEN25_VL_7B_PARAMS,
                         "bfloat16", 2)


def test_hunyuan_video_text_encoders():
    p = probe_model(FIXTURES / "HunyuanVideo")
    _assert_text_encoder(p, "text_encoder", "LlamaModel", LLAVA_LLAMA3_8B_TEXT_PARAMS, "float16", 2)
    _assert_text_encoder(p, "text_encoder_2", "CLIPTextModel", CLIP_L_TEXT_PARAMS, "float16", 2)


def test_text_encoder_fixtures_name_their_source():
    for cfg in FIXTURES.glob("*/text_encoder*/config.json"):
        assert json.loads(cfg.read_text()).get("_source"), cfg


def test_config_only_8b_text_encoder_is_fast():
    pytest.importorskip("transformers")
    import time

    import diffusers  # noqa: F401  (import cost is not probe cost)
    import transformers  # noqa: F401
    probe_model(FIXTURES / "Qwen-Image")  # warm: first use of the lazy model modules
    t = time.perf_counter()
    probe_model(FIXTURES / "Qwen-Image")  # 8.29 B-parameter text encoder built on the meta device
    assert time.perf_counter() - t < 5.0
