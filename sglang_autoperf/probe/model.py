"""ModelProfile: what a diffusers-layout model folder asks of the GPU, read from its files alone.

Reads model_index.json, each component's config and safetensors *headers* (never tensor data).
Bytes are run-time bytes: the dtype sglang will load the component in, not the dtype on disk.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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

    @property
    def is_video(self) -> bool:
        return "video" in self.task
