"""The random checkpoints benchmarks/make_checkpoints.py builds for the issue-16 families load in the
real sglang 0.5.23 (`sglang generate` on the CPU, tiny shapes of the same architecture): sglang's own
DiT class, not its diffusers fallback (which has no layerwise offload), its Qwen3 text encoder and
the stand-in tokenizer with its chat template. Before the Z-Image config carried sglang's names for
layers and heads, sglang built 30 heads for the tiny DiT, failed its head_dim check and fell back.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import generate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_checkpoints  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("key, dit_class", [("z-image-turbo", "ZImageTransformer2DModel"),
                                            ("flux.2-klein-4b", "Flux2Transformer2DModel")])
def test_tiny_family_checkpoint_runs_in_sglang(tmp_path, key, dit_class):
    assert make_checkpoints.main([key, "--tiny", "--device", "cpu", "--root", str(tmp_path / "models")]) == 0
    model = tmp_path / "models" / make_checkpoints.folder_name(make_checkpoints.SPECS[key], tiny=True)
    run = generate(tmp_path / "run", model)
    assert run.rc == 0 and run.outputs and run.perf_dump.exists(), run.log[-4000:]
    loaded = run.lines("Loaded transformer:")
    assert len(loaded) == 1 and dit_class in loaded[0] and "(sgl-diffusion version)" in loaded[0], run.log[-4000:]
    assert not run.lines("falling back to native version")
    assert run.lines("Loaded text_encoder: Qwen3ForCausalLM (sgl-diffusion version)")
    steps = json.loads(run.perf_dump.read_text())["denoise_steps_ms"]
    assert len(steps) == 2  # the request's two steps ran


def test_zimage_config_names_what_sglang_builds_from(tmp_path):
    """sglang reads num_layers / num_attention_heads; diffusers builds from n_layers / n_heads: both agree."""
    make_checkpoints.main(["z-image-turbo", "--tiny", "--device", "cpu", "--root", str(tmp_path)])
    folder = tmp_path / make_checkpoints.folder_name(make_checkpoints.SPECS["z-image-turbo"], tiny=True)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    from sglang.multimodal_gen.configs.models.dits.zimage import ZImageDitConfig

    sglang_config = ZImageDitConfig()
    sglang_config.update_model_arch({k: v for k, v in config.items() if not k.startswith("_")})
    arch = sglang_config.arch_config
    assert (arch.num_layers, arch.num_attention_heads) == (config["n_layers"], config["n_heads"])
    assert arch.dim // arch.num_attention_heads == sum(arch.axes_dims)  # the check sglang's DiT asserts
