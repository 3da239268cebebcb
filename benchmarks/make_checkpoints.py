"""Build random-weight, diffusers-layout checkpoints in real model architectures, with no network.

For benchmarking offload and residency without downloading weights: what is timed (DiT shapes,
bytes per block, tokens) is exactly the real model's; what is produced (pixels) is noise.

    python3 benchmarks/make_checkpoints.py wan2.1-t2v-1.3b --root /tmp/models
    python3 benchmarks/make_checkpoints.py wan2.1-t2v-14b  --root /tmp/models
    python3 benchmarks/make_checkpoints.py flux.1-dev      --root /tmp/models
    python3 benchmarks/make_checkpoints.py z-image-turbo   --root /tmp/models
    python3 benchmarks/make_checkpoints.py flux.2-klein-4b --root /tmp/models
    python3 benchmarks/make_checkpoints.py wan2.1-t2v-1.3b --tiny --device cpu   # CPU smoke test

The folder is named after the real model (`Wan2.1-T2V-14B-Diffusers-random`, `FLUX.1-dev-random`):
sglang 0.5.23 matches a local folder's name against its registered model ids before it reads
`model_index.json`, so these names get the real model's pipeline config (for FLUX.1 also pass
`--model-id FLUX.1-dev` to be explicit). `--print-path` prints the folder a build would use.

How the DiT is written (the part that has to be fast: 28.6 GB for Wan2.1-14B):
  * the diffusers class is built on the `meta` device (no memory, no init) only to learn its
    parameter names, shapes and config;
  * tensors are drawn shard by shard on the build device (CUDA when present) directly in bf16:
    matrices and other >=2-D tensors ~ N(0, std), biases 0, 1-D weights (norms) 1;
  * each shard is copied to the host and written by a pool of writer threads (safetensors
    format, written here so that no extra serialisation copy is made), while the next shard is
    drawn; an index json maps names to shards, as diffusers writes it.
Everything else (VAE, text encoders, tokenizers, scheduler) is small and built with the libraries'
own save_pretrained. Text encoders are SMALL stand-ins (2 layers) with the real output widths, so
the DiT's text projections get the shapes they expect; the tokenizers are built locally
(word-level for T5/UMT5, byte-level BPE without merges for CLIP and Qwen, the latter with a
Qwen-style chat template, which sglang's Z-Image and FLUX.2-Klein prompt encoding applies). The
Qwen3 stand-in keeps the layers sglang reads hidden states from (Z-Image: the second to last;
FLUX.2-Klein: layers 9, 18 and 27, stacked into the DiT's 7680-wide text input), with a narrow MLP.
The folder gets `_source.json` and `README.md` saying all this.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

# Published configs (diffusers layout) of the models copied here.
WAN_T2V_1_3B = dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960)
WAN_T2V_14B = dict(num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824)
WAN_TINY = dict(num_layers=2, num_attention_heads=2, attention_head_dim=32, ffn_dim=128)
WAN_COMMON = dict(
    patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
    added_kv_proj_dim=None, rope_max_seq_len=1024,
)
FLUX_1_DEV = dict(
    patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
    pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLUX_TINY = dict(
    patch_size=1, in_channels=64, out_channels=None, num_layers=1, num_single_layers=2,
    attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64,
    pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
)

# Z-Image-Turbo (Tongyi-MAI/Z-Image-Turbo): diffusers' ZImageTransformer2DModel defaults, which are
# sglang 0.5.23's ZImageArchConfig defaults too (6.15 B params; sglang streams its 30 `layers`).
Z_IMAGE_TURBO = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
    n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0,
    t_scale=1000.0, axes_dims=(32, 48, 48), axes_lens=(1024, 512, 512),
)
Z_IMAGE_TINY = dict(Z_IMAGE_TURBO, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=64,
                    axes_dims=(8, 12, 12))
# FLUX.2-klein-4B: 5 double- and 20 single-stream blocks of width 3072 (3.88 B params). The text
# width is fixed by sglang's flux2_klein_postprocess_text: 3 Qwen3-4B layers x 2560 = 7680.
FLUX_2_KLEIN_4B = dict(
    patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False,
)
FLUX_2_KLEIN_TINY = dict(FLUX_2_KLEIN_4B, num_layers=1, num_single_layers=2, attention_head_dim=32,
                         num_attention_heads=2, joint_attention_dim=3 * 64, axes_dims_rope=(8, 8, 8, 8))
QWEN3_4B_HIDDEN = 2560


@dataclass(frozen=True)
class Spec:
    key: str  # what the user types
    folder: str  # named after the real model id, see the module docstring
    real_id: str  # the Hugging Face id whose architecture is copied
    family: str  # "wan", "flux", "zimage" or "flux2_klein"
    dit: dict = field(default_factory=dict)


SPECS = {
    "wan2.1-t2v-1.3b": Spec("wan2.1-t2v-1.3b", "Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                            "wan", {**WAN_COMMON, **WAN_T2V_1_3B}),
    "wan2.1-t2v-14b": Spec("wan2.1-t2v-14b", "Wan2.1-T2V-14B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers",
                           "wan", {**WAN_COMMON, **WAN_T2V_14B}),
    "flux.1-dev": Spec("flux.1-dev", "FLUX.1-dev", "black-forest-labs/FLUX.1-dev", "flux", dict(FLUX_1_DEV)),
    "z-image-turbo": Spec("z-image-turbo", "Z-Image-Turbo", "Tongyi-MAI/Z-Image-Turbo", "zimage", dict(Z_IMAGE_TURBO)),
    "flux.2-klein-4b": Spec("flux.2-klein-4b", "FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-4B", "flux2_klein",
                            dict(FLUX_2_KLEIN_4B)),
}
TINY_DIT = {"wan": {**WAN_COMMON, **WAN_TINY}, "flux": dict(FLUX_TINY), "zimage": dict(Z_IMAGE_TINY),
            "flux2_klein": dict(FLUX_2_KLEIN_TINY)}

DONE_MARKER = "_source.json"  # written last: a folder without it is an interrupted build


def log(t0: float, msg: str) -> None:
    print(f"[make_checkpoints {time.time() - t0:6.1f}s] {msg}", flush=True)


def folder_name(spec: Spec, tiny: bool) -> str:
    return f"{spec.folder}-random{'-tiny' if tiny else ''}"


# --------------------------------------------------------------------------- safetensors writing

_ST_DTYPES = {"torch.bfloat16": "BF16", "torch.float16": "F16", "torch.float32": "F32"}


def write_safetensors(path: str, tensors: list[tuple[str, "object"]], metadata: dict | None = None) -> int:
    """Write CPU tensors to one .safetensors file, streaming each tensor's bytes (no extra copy).

    Format: u64-le header length, JSON header {name: {dtype, shape, data_offsets}}, raw bytes.
    Returns the bytes of tensor data written.
    """
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[str(t.dtype)], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    tmp = f"{path}.partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, t in tensors:
            if t.numel():
                f.write(memoryview(t.contiguous().reshape(-1).view(dtype=_u8()).numpy()))
    os.replace(tmp, path)
    return offset


def _u8():
    import torch

    return torch.uint8


def plan_shards(shapes: list[tuple[str, tuple[int, ...]]], bytes_per_elem: int, max_shard_bytes: int) -> list[list]:
    """Split (name, shape) in state-dict order into shards of at most max_shard_bytes (one tensor may exceed)."""
    shards: list[list] = [[]]
    size = 0
    for name, shape in shapes:
        n = bytes_per_elem
        for d in shape:
            n *= d
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def random_tensor(name: str, shape: tuple[int, ...], dtype, device, gen, std: float):
    import torch

    if len(shape) >= 2:
        return torch.randn(shape, dtype=dtype, device=device, generator=gen).mul_(std)
    if name.endswith(".weight") or name.endswith(".scale"):  # 1-D weights are norm scales
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)  # biases


def write_random_dit(model_cls, config: dict, out_dir: str, *, device, dtype, std: float, seed: int,
                     max_shard_gb: float, writers: int, t0: float) -> dict:
    """Write a random-weight diffusers DiT (config.json + sharded safetensors + index) to out_dir."""
    import torch

    os.makedirs(out_dir, exist_ok=True)
    with torch.device("meta"):
        meta_model = model_cls(**config)
    meta_model.save_config(out_dir)
    shapes = [(n, tuple(t.shape)) for n, t in meta_model.state_dict().items()]
    del meta_model
    elem = torch.empty((), dtype=dtype).element_size()
    shards = plan_shards(shapes, elem, int(max_shard_gb * 2**30))
    total_params = sum(_numel(s) for _, s in shapes)
    log(t0, f"{model_cls.__name__}: {total_params / 1e9:.3f} B params, {len(shapes)} tensors, "
            f"{len(shards)} shard(s), drawn on {device}")

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    n = len(shards)
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors" if n > 1
             else "diffusion_pytorch_model.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=max(1, writers)) as pool:
        for shard, fname in zip(shards, names):
            while len(pending) >= max(1, writers):  # bound host memory: shards waiting to be written
                pending.pop(0).result()
            host = []
            for name, shape in shard:
                t = random_tensor(name, shape, dtype, device, gen, std)
                host.append((name, t.to("cpu") if t.device.type != "cpu" else t))
                weight_map[name] = fname
            pending.append(pool.submit(write_safetensors, os.path.join(out_dir, fname), host))
        for f in pending:
            f.result()
    total_bytes = total_params * elem
    if n > 1:
        with open(os.path.join(out_dir, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=1)
    return {"class": model_cls.__name__, "params": total_params, "bytes": total_bytes, "shards": n,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}}


def add_config_keys(path: str, **keys) -> None:
    """Add keys to a written config.json (diffusers ignores keys its class does not take)."""
    with open(path) as f:
        config = json.load(f)
    config.update(keys)
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --------------------------------------------------------------------------- small components

PROMPT_WORDS = ("a the red blue green car cat dog on in of and with at is sky photo man woman street "
                "city beach sunset walks runs").split()


def save_word_tokenizer(out_dir: str, vocab_size: int = 1000, max_len: int = 512) -> int:
    """A word-level fast tokenizer standing in for T5/UMT5's sentencepiece one ('</s>' appended)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + PROMPT_WORDS
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_len)
    fast.save_pretrained(out_dir)
    return len(words)


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: 256 printable stand-ins, one per byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def save_clip_tokenizer(out_dir: str) -> tuple[int, int, int]:
    """A byte-level BPE CLIP tokenizer with no merges (one token per character); bos/eos are the last ids."""
    from transformers import CLIPTokenizer

    os.makedirs(out_dir, exist_ok=True)
    syms = _byte_symbols()
    vocab = syms + [s + "</w>" for s in syms] + ["<|startoftext|>", "<|endoftext|>"]
    vf, mf = os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt")
    with open(vf, "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(mf, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    kw = dict(model_max_length=77, unk_token="<|endoftext|>", bos_token="<|startoftext|>",
              eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    try:  # transformers >= 5: tokenizers-backed, takes vocab=/merges=
        tok = CLIPTokenizer(vocab=vf, merges=mf, **kw)
    except TypeError:  # transformers 4.x
        tok = CLIPTokenizer(vocab_file=vf, merges_file=mf, **kw)
    tok.save_pretrained(out_dir)
    return len(vocab), len(vocab) - 2, len(vocab) - 1


def build_small_t5(cls_name: str, d_model: int, vocab: int, layers: int, out_dir: str, device, dtype) -> int:
    import torch
    import transformers

    cfg_cls = transformers.UMT5Config if cls_name == "UMT5EncoderModel" else transformers.T5Config
    cfg = cfg_cls(vocab_size=vocab, d_model=d_model, d_kv=64, d_ff=1024, num_layers=layers,
                  num_decoder_layers=layers, num_heads=8, relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                  is_encoder_decoder=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                  tie_word_embeddings=False, layer_norm_epsilon=1e-6)
    with torch.device(device):
        model = getattr(transformers, cls_name)(cfg)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def build_small_clip(hidden: int, heads: int, ffn: int, layers: int, vocab: int, bos: int, eos: int,
                     out_dir: str, device, dtype) -> int:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, projection_dim=hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos)
    with torch.device(device):
        model = CLIPTextModel(cfg)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- per family

def build_wan(spec: Spec, out: str, a, device, t0: float) -> dict:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from sglang_autoperf.demo_model import WAN_PIPELINE_COMPONENTS, write_wan_scheduler

    dit_cfg = TINY_DIT["wan"] if a.tiny else spec.dit
    info = {"transformer": write_random_dit(
        WanTransformer3DModel, dit_cfg, os.path.join(out, "transformer"), device=device, dtype=torch.bfloat16,
        std=a.std, seed=a.seed, max_shard_gb=a.shard_gb, writers=a.writers, t0=t0)}
    log(t0, "transformer written")

    with torch.device(device):
        vae = AutoencoderKLWan(base_dim=32 if a.tiny else 96)  # default config is the Wan2.1 VAE
    vae.to(torch.float32).save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    info["vae"] = {"class": "AutoencoderKLWan", "params": sum(p.numel() for p in vae.parameters())}
    del vae
    log(t0, "vae written")

    vocab = save_word_tokenizer(os.path.join(out, "tokenizer"))
    params = build_small_t5("UMT5EncoderModel", dit_cfg["text_dim"], vocab, a.te_layers,
                            os.path.join(out, "text_encoder"), device, torch.bfloat16)
    info["text_encoder"] = {"class": "UMT5EncoderModel", "params": params, "stand_in": True,
                            "layers": a.te_layers, "d_model": dit_cfg["text_dim"]}
    log(t0, "tokenizer + text encoder written")

    write_wan_scheduler(os.path.join(out, "scheduler"))  # the demo model's: one definition of a Wan folder
    write_model_index(out, "WanPipeline", dict(WAN_PIPELINE_COMPONENTS))
    return info


def build_flux(spec: Spec, out: str, a, device, t0: float) -> dict:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    dit_cfg = TINY_DIT["flux"] if a.tiny else spec.dit
    info = {"transformer": write_random_dit(
        FluxTransformer2DModel, dit_cfg, os.path.join(out, "transformer"), device=device, dtype=torch.bfloat16,
        std=a.std, seed=a.seed, max_shard_gb=a.shard_gb, writers=a.writers, t0=t0)}
    log(t0, "transformer written")

    info["vae"] = save_flux1_vae(out, a.tiny, device)
    log(t0, "vae written")

    clip_vocab, bos, eos = save_clip_tokenizer(os.path.join(out, "tokenizer"))
    hidden = dit_cfg["pooled_projection_dim"]
    heads = 2 if a.tiny else 12
    params = build_small_clip(hidden, heads, 4 * hidden, a.te_layers, clip_vocab, bos, eos,
                              os.path.join(out, "text_encoder"), device, torch.bfloat16)
    info["text_encoder"] = {"class": "CLIPTextModel", "params": params, "stand_in": True,
                            "layers": a.te_layers, "hidden": hidden}
    t5_vocab = save_word_tokenizer(os.path.join(out, "tokenizer_2"))
    params = build_small_t5("T5EncoderModel", dit_cfg["joint_attention_dim"], t5_vocab, a.te_layers,
                            os.path.join(out, "text_encoder_2"), device, torch.bfloat16)
    info["text_encoder_2"] = {"class": "T5EncoderModel", "params": params, "stand_in": True,
                              "layers": a.te_layers, "d_model": dit_cfg["joint_attention_dim"]}
    log(t0, "tokenizers + text encoders written")

    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                    max_image_seq_len=4096).save_pretrained(os.path.join(out, "scheduler"))
    write_model_index(out, "FluxPipeline", {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return info


def save_flux1_vae(out: str, tiny: bool, device) -> dict:
    """The published FLUX.1 VAE config (Z-Image uses the same VAE), fp32, library default init."""
    import torch
    from diffusers import AutoencoderKL

    blocks = (32, 32, 32, 32) if tiny else (128, 256, 512, 512)
    with torch.device(device):
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=blocks, layers_per_block=1 if tiny else 2, act_fn="silu",
            norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
            latents_mean=None, latents_std=None, force_upcast=True, use_quant_conv=False,
            use_post_quant_conv=False, mid_block_add_attention=True)
    vae.to(torch.float32).save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    return {"class": "AutoencoderKL", "params": sum(p.numel() for p in vae.parameters())}


QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def save_qwen_tokenizer(out_dir: str, max_len: int = 512) -> int:
    """A byte-level BPE tokenizer without merges (one token per byte) with Qwen's special tokens and
    chat template, standing in for Qwen3's; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    vocab = {t: i for i, t in enumerate(_byte_symbols() + specials)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   model_max_length=max_len, chat_template=QWEN_CHAT_TEMPLATE)
    fast.save_pretrained(out_dir)
    return len(vocab)


def build_small_qwen3(hidden: int, layers: int, vocab: int, out_dir: str, device, dtype) -> int:
    """A Qwen3ForCausalLM stand-in: the real width, `layers` layers, 4 heads of 128 (tiny: 2 of 32), MLP 512."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    head_dim = 128 if hidden >= 512 else 32
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=512, num_hidden_layers=layers,
                      num_attention_heads=4 if hidden >= 512 else 2, num_key_value_heads=2, head_dim=head_dim,
                      max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, pad_token_id=vocab - 5, eos_token_id=vocab - 3)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def _qwen_text_encoder(out: str, hidden: int, layers: int, device) -> dict:
    import torch

    vocab = save_qwen_tokenizer(os.path.join(out, "tokenizer"))
    params = build_small_qwen3(hidden, layers, vocab, os.path.join(out, "text_encoder"), device, torch.bfloat16)
    return {"class": "Qwen3ForCausalLM", "params": params, "stand_in": True, "layers": layers, "hidden": hidden}


def build_zimage(spec: Spec, out: str, a, device, t0: float) -> dict:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

    dit_cfg = TINY_DIT["zimage"] if a.tiny else spec.dit
    info = {"transformer": write_random_dit(
        ZImageTransformer2DModel, dit_cfg, os.path.join(out, "transformer"), device=device, dtype=torch.bfloat16,
        std=a.std, seed=a.seed, max_shard_gb=a.shard_gb, writers=a.writers, t0=t0)}
    # sglang 0.5.23's ZImageArchConfig takes every config.json key but builds from num_layers and
    # num_attention_heads, not diffusers' n_layers / n_heads: without them the tiny build got 30
    # heads, failed sglang's head_dim assert and fell back to diffusers (CPU `sglang generate`, 2026-11-29)
    add_config_keys(os.path.join(out, "transformer", "config.json"),
                    num_layers=dit_cfg["n_layers"], num_attention_heads=dit_cfg["n_heads"])
    info["vae"] = save_flux1_vae(out, a.tiny, device)
    # sglang's zimage_postprocess_text reads hidden_states[-2]: any depth >= 2 works
    info["text_encoder"] = _qwen_text_encoder(out, dit_cfg["cap_feat_dim"], max(2, a.te_layers), device)
    log(t0, "vae, tokenizer and text encoder written")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                    use_dynamic_shifting=False).save_pretrained(os.path.join(out, "scheduler"))
    write_model_index(out, "ZImagePipeline", {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return info


# sglang's flux2_klein_postprocess_text stacks these hidden states (embeddings are index 0)
KLEIN_TEXT_LAYERS = (9, 18, 27)


def build_flux2_klein(spec: Spec, out: str, a, device, t0: float) -> dict:
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    dit_cfg = TINY_DIT["flux2_klein"] if a.tiny else spec.dit
    info = {"transformer": write_random_dit(
        Flux2Transformer2DModel, dit_cfg, os.path.join(out, "transformer"), device=device, dtype=torch.bfloat16,
        std=a.std, seed=a.seed, max_shard_gb=a.shard_gb, writers=a.writers, t0=t0)}
    with torch.device(device):  # diffusers' AutoencoderKLFlux2 defaults: 32 latent channels, /8, 2x2 patches
        vae = AutoencoderKLFlux2(**({"block_out_channels": (32, 32, 32, 32), "layers_per_block": 1} if a.tiny else {}))
    vae.to(torch.float32).save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    info["vae"] = {"class": "AutoencoderKLFlux2", "params": sum(p.numel() for p in vae.parameters())}
    del vae
    hidden = dit_cfg["joint_attention_dim"] // len(KLEIN_TEXT_LAYERS)
    info["text_encoder"] = _qwen_text_encoder(out, hidden, max(KLEIN_TEXT_LAYERS), device)
    log(t0, "vae, tokenizer and text encoder written")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                    max_image_seq_len=4096).save_pretrained(os.path.join(out, "scheduler"))
    write_model_index(out, "Flux2KleinPipeline", {
        "is_distilled": True,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    })
    return info


BUILDERS = {"wan": build_wan, "flux": build_flux, "zimage": build_zimage, "flux2_klein": build_flux2_klein}


def write_model_index(out: str, class_name: str, components: dict) -> None:
    import diffusers

    # sglang routes a local folder to diffusion only when _diffusers_version is present
    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__, **components}
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)


def write_note(out: str, spec: Spec, tiny: bool, info: dict, seconds: float, device: str, std: float) -> None:
    source = {
        "builder": "sglang-autoperf benchmarks/make_checkpoints.py",
        "architecture_of": spec.real_id,
        "tiny": tiny,
        "weights": f"random: >=2-D tensors N(0, {std}) in bf16, biases 0, norm weights 1 (VAE: library default init)",
        "text_encoders": "small stand-ins (few layers) with the real output widths; tokenizers built locally",
        "valid_for": "timing and memory of the DiT (shapes, bytes per block); outputs are noise",
        "built_on": device,
        "build_seconds": round(seconds, 1),
        "components": info,
    }
    dit = info["transformer"]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(f"# Random-weight checkpoint shaped like {spec.real_id}{' (tiny)' if tiny else ''}\n\n"
                f"Built by sglang-autoperf `benchmarks/make_checkpoints.py` in {seconds:.0f} s on {device}. "
                f"DiT: `{dit['class']}`, {dit['params'] / 1e9:.3f} B params, "
                f"{dit['bytes'] / 1e9:.2f} GB bf16, {'tiny shapes' if tiny else 'the published config'}; "
                f"random weights, so images/videos are noise: use it for timing and memory only.\n\n"
                "Text encoders are SMALL stand-ins (" +
                ", ".join(f"{k}: {v['class']} {v.get('layers')} layers" for k, v in info.items() if v.get("stand_in")) +
                ") with the real output widths so the DiT's text projections fit; tokenizers are built "
                "locally (word-level / byte-level BPE without merges). Text encoding time is therefore "
                "not representative. Details in `_source.json`.\n")
    tmp = os.path.join(out, DONE_MARKER + ".partial")
    with open(tmp, "w") as f:
        json.dump(source, f, indent=1)
    os.replace(tmp, os.path.join(out, DONE_MARKER))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(SPECS))
    ap.add_argument("--root", default="/tmp/models", help="parent folder (default /tmp/models)")
    ap.add_argument("--out", help="exact output folder (overrides --root and the default name)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes of the same architecture (CPU smoke tests)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--te-layers", type=int, default=2, help="layers of the stand-in text encoders")
    ap.add_argument("--shard-gb", type=float, default=4.0, help="max DiT shard size (GiB)")
    ap.add_argument("--writers", type=int, default=4, help="shard writer threads (also bounds host memory)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    ap.add_argument("--print-path", action="store_true", help="print the output folder and exit")
    a = ap.parse_args(argv)

    spec = SPECS[a.model]
    out = os.path.abspath(a.out or os.path.join(a.root, folder_name(spec, a.tiny)))
    if a.print_path:
        print(out)
        return 0
    if os.path.exists(os.path.join(out, DONE_MARKER)) and not a.force:
        print(f"[make_checkpoints] complete build exists: {out} (--force to rebuild)", flush=True)
        print(out)
        return 0

    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)  # an interrupted build: start clean
    os.makedirs(out)
    log(t0, f"building {spec.key}{' (tiny)' if a.tiny else ''} -> {out} on {device}")
    with torch.no_grad():
        info = BUILDERS[spec.family](spec, out, a, torch.device(device), t0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.time() - t0
    write_note(out, spec, a.tiny, info, secs, device, a.std)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    log(t0, f"done: {size / 1e9:.2f} GB on disk in {secs:.1f}s")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
