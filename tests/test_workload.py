"""Workload: tokens per forward pass, CFG passes and steps from a ModelProfile."""
from __future__ import annotations

from pathlib import Path

from sglang_autoperf.probe.model import probe_model
from sglang_autoperf.probe.workload import workload_for

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def test_wan_tokens():
    wan = probe_model(FIXTURES / "Wan2.1-T2V-14B-Diffusers")
    w = workload_for(wan, 832, 480, num_frames=17)
    assert w.tokens_per_pass == 5 * 30 * 52 == 7_800
    assert workload_for(wan, 832, 480, num_frames=81).tokens_per_pass == 32_760
    assert workload_for(wan, 1280, 720, num_frames=81).tokens_per_pass == 75_600
    assert (w.cfg_passes, w.steps, w.text_tokens, w.num_frames) == (2, 50, 512, 17)
    assert workload_for(wan, 832, 480, 17, guidance_scale=1.0).cfg_passes == 1
    assert workload_for(wan, 832, 480, 17, cfg_parallel=True).cfg_passes == 1
    assert workload_for(wan, 832, 480, 17, steps=4).steps == 4


def test_flux_tokens():
    flux = probe_model(FIXTURES / "FLUX.1-dev")
    w = workload_for(flux, 1024, 1024)
    assert w.tokens_per_pass == 4_096 and w.text_tokens == 512
    assert w.cfg_passes == 1  # guidance-distilled: guidance is embedded, one pass
    assert workload_for(flux, 1024, 1024, guidance_scale=3.5).cfg_passes == 1
    assert w.steps == 50 and w.num_frames == 1


def test_qwen_and_hunyuan_tokens():
    qwen = probe_model(FIXTURES / "Qwen-Image")
    w = workload_for(qwen, 1328, 1328)
    assert w.tokens_per_pass == 83 * 83 and w.cfg_passes == 2
    hy = probe_model(FIXTURES / "HunyuanVideo")
    w = workload_for(hy, 1280, 720, num_frames=129)
    assert w.tokens_per_pass == 33 * 45 * 80 and w.cfg_passes == 1 and w.text_tokens == 256


def test_wan22_steps():
    w = workload_for(probe_model(FIXTURES / "Wan2.2-T2V-A14B-Diffusers"), 832, 480, 81)
    assert (w.steps, w.cfg_passes, w.tokens_per_pass) == (40, 2, 32_760)
