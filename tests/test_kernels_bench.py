"""benchmarks/kernel_bench.py on the CPU: its block shapes are the real diffusers models' (built on
the meta device, as make_checkpoints.py builds them), and its safetensors reader gives the codec's
statistics per BF16 tensor of a folder written by make_checkpoints.write_safetensors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kernel_bench  # noqa: E402
import make_checkpoints  # noqa: E402


def _meta_block(model_cls, config: dict, prefix: str) -> list:
    with torch.device("meta"):
        model = model_cls(**config)
    return [(n[len(prefix):], tuple(t.shape)) for n, t in model.state_dict().items() if n.startswith(prefix)]


def test_block_shapes_are_the_diffusers_models():
    diffusers = pytest.importorskip("diffusers")
    flux, wan = diffusers.FluxTransformer2DModel, diffusers.WanTransformer3DModel
    wan14 = {**make_checkpoints.WAN_COMMON, **make_checkpoints.WAN_T2V_14B}
    wan13 = {**make_checkpoints.WAN_COMMON, **make_checkpoints.WAN_T2V_1_3B}
    assert kernel_bench.BLOCKS["flux.1-dev/transformer_blocks.0"]() == _meta_block(
        flux, make_checkpoints.FLUX_1_DEV, "transformer_blocks.0.")
    assert kernel_bench.BLOCKS["flux.1-dev/single_transformer_blocks.0"]() == _meta_block(
        flux, make_checkpoints.FLUX_1_DEV, "single_transformer_blocks.0.")
    assert kernel_bench.BLOCKS["wan2.1-t2v-14b/blocks.0"]() == _meta_block(wan, wan14, "blocks.0.")
    assert kernel_bench.BLOCKS["wan2.1-t2v-1.3b/blocks.0"]() == _meta_block(wan, wan13, "blocks.0.")


def test_safetensors_folder_statistics(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(64, 96, generator=gen) * 0.02).to(torch.bfloat16)
    bits = torch.randint(-32768, 32767, (1000,), generator=gen, dtype=torch.int16).view(torch.bfloat16)
    make_checkpoints.write_safetensors(str(tmp_path / "a.safetensors"),
                                       [("w", weight), ("scale", torch.ones(8)), ("noise", bits)])
    out = tmp_path / "files.json"
    assert kernel_bench.main(["--safetensors", str(tmp_path), "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    rows = {r["name"]: r for r in summary["tensors"]}
    assert set(rows) == {"a.safetensors:w", "a.safetensors:noise"}  # the fp32 tensor is not bf16
    w = rows["a.safetensors:w"]
    assert w["shape"] == [64, 96] and w["raw_bytes"] == 64 * 96 * 2
    assert w["compressed_bytes"] == 64 * 96 * 3 // 2 + 16 + 5 * round(w["escape_rate"] * 64 * 96)
    assert rows["a.safetensors:noise"]["compressed_bytes"] == 2000  # uniform bits stay raw
    assert summary["compressed_bytes"] == w["compressed_bytes"] + 2000


def test_without_a_gpu_the_timed_part_says_so(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert kernel_bench.main(["--out", str(tmp_path / "k.json")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "k.json").exists()
