"""`sglang-autoperf demo-model DIR`: a tiny random-weight Wan2.1-T2V model in the diffusers layout.

It exists so that the README and the tests can run the real `sglang generate` with no model hub:
a few MB, built offline in seconds with the real diffusers/transformers classes sglang loads.
The weights are random, so the video is noise; the shapes and the code paths are real.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

# Small enough for a 2-core CPU run in seconds; Wan2.1's structure (patch 1x2x2, 16 latent
# channels, UMT5 text encoder, Wan VAE with 8x spatial / 4x temporal compression).
DEMO_SHAPE = dict(layers=2, heads=2, head_dim=32, ffn=128, text_dim=64, te_layers=1, vae_base_dim=8)
# Neutral name: sglang matches folder names against known model ids before model_index.json,
# and a folder named like a real model would silently get that model's config.


def build_demo_model(out_dir: str | os.PathLike, *, seed: int = 0, layers: int | None = None) -> Path:
    """A diffusers-layout Wan2.1-T2V folder with random weights and tiny shapes (DEMO_SHAPE). The
    parts are written in a fixed order from one seeded generator: the same seed, the same bytes."""
    import torch

    shape = dict(DEMO_SHAPE)
    if layers is not None:
        shape["layers"] = layers
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _write_transformer(out, shape)
    _write_vae(out, shape)
    vocab_size = _write_tokenizer(out)
    _write_text_encoder(out, shape, vocab_size)
    _write_scheduler_and_index(out)
    return out


def _write_transformer(out: Path, shape: dict) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=shape["heads"], attention_head_dim=shape["head_dim"],
        in_channels=16, out_channels=16, text_dim=shape["text_dim"], freq_dim=256, ffn_dim=shape["ffn"],
        num_layers=shape["layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    )
    with torch.no_grad():  # default init overflows bf16 on some layers
        for p in transformer.parameters():
            if p.dim() >= 2:
                p.mul_(0.5)
    transformer.to(torch.bfloat16).save_pretrained(out / "transformer", safe_serialization=True)


def _write_vae(out: Path, shape: dict) -> None:
    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(base_dim=shape["vae_base_dim"], z_dim=16, num_res_blocks=1)
    vae.to(torch.float32).save_pretrained(out / "vae", safe_serialization=True)


def _write_tokenizer(out: Path) -> int:
    """A word-level tokenizer of 256 words; returns the vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + "a the cat dog on in of and with red blue car sky".split()
    words += [f"w{i}" for i in range(256 - len(words))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    ).save_pretrained(out / "tokenizer")
    return len(words)


def _write_text_encoder(out: Path, shape: dict, vocab_size: int) -> None:
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    te_config = UMT5Config(
        vocab_size=vocab_size, d_model=shape["text_dim"], d_kv=16, d_ff=128, num_layers=shape["te_layers"],
        num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
    )
    UMT5EncoderModel(te_config).to(torch.bfloat16).save_pretrained(out / "text_encoder", safe_serialization=True)


# model_index.json components of a diffusers WanPipeline (Wan2.1-T2V); benchmarks/make_checkpoints.py
# writes its full-size Wan folders with the same components and scheduler
WAN_PIPELINE_COMPONENTS = {
    "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "WanTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}


def write_wan_scheduler(path: str | os.PathLike) -> None:
    """Wan2.1-T2V's scheduler: UniPC over flow-matching sigmas, shift 3."""
    from diffusers import UniPCMultistepScheduler

    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
        num_train_timesteps=1000, solver_order=2, predict_x0=True,
    ).save_pretrained(path)


def _write_scheduler_and_index(out: Path) -> None:
    write_wan_scheduler(out / "scheduler")
    model_index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.37.0",
        "_source": "sglang-autoperf demo-model: random weights, Wan2.1-T2V structure, tiny shapes",
        **WAN_PIPELINE_COMPONENTS,
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=1))


def folder_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main_build(out_dir: str) -> int:
    t0 = time.perf_counter()
    out = build_demo_model(out_dir)
    print(f"demo model written to {out} ({folder_bytes(out) / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0
