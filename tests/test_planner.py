"""Planner decisions on the real fixtures (config-only models, NVML/datasheet GPU snapshots)."""
import dataclasses
import json
import random

import pytest

from sglang_autoperf.plan import cost
from sglang_autoperf.plan.budget import parse_vram_budget
from sglang_autoperf.plan.planner import Plan, format_plan, make_plan, plan_to_json_dict
from sglang_autoperf.probe.workload import workload_for
from test_cost_model import card, h100, model

GiB = 1024**3


def plan_for(name, gpu, w, h, frames=1, pinned=None, current=None, budget=None, num_gpus=1,
             guidance_scale=None, **kw):
    m = model(name)
    wl = workload_for(m, w, h, num_frames=frames, guidance_scale=guidance_scale)
    p = make_plan(gpu, m, wl, pinned or {}, current or {}, budget, num_gpus=num_gpus, **kw)
    return m, wl, p


def changed(p):
    return {c.setting: c.after for c in p.changes}


@pytest.mark.parametrize("name", ["FLUX.1-dev", "Qwen-Image"])
def test_image_models_on_h100_stay_resident_and_compile_when_allowed(name):
    _, _, p = plan_for(name, h100(), 1024, 1024, allow_compile=True)
    assert not p.dit.offload
    assert p.settings["dit_layerwise_offload"] is False
    assert changed(p).get("enable_torch_compile") is True
    assert p.predicted.exposed_copy_ms == 0
    assert p.predicted.vram_bytes <= p.predicted.budget_bytes


def test_wan22_720p_on_one_h100_streams_with_copies_hidden():
    _, _, p = plan_for("Wan2.2-T2V-A14B-Diffusers", h100(), 1280, 720, 81)
    assert p.dit.offload
    assert changed(p)["dit_layerwise_offload"] is True
    assert p.predicted.exposed_copy_ms <= 0.02 * p.predicted.step_ms
    assert p.predicted.step_ms == pytest.approx(p.predicted.resident_step_ms, rel=0.02)
    assert p.predicted.vram_bytes <= p.predicted.budget_bytes
    assert 0 < p.dit.resident_layers < 40


def test_cfg_model_on_two_gpus_gets_cfg_parallel():
    _, wl, p = plan_for("Qwen-Image", h100(2), 1024, 1024, num_gpus=2, current={"num_gpus": 2})
    assert wl.cfg_passes == 2
    assert changed(p)["enable_cfg_parallel"] is True
    assert all(g["passes_per_step"] == 1 for g in p.predicted.per_gpu)
    assert len(p.predicted.per_gpu) == 2
    # FLUX.1-dev is guidance-distilled: one pass, nothing for a CFG rank to do
    _, _, pf = plan_for("FLUX.1-dev", h100(2), 1024, 1024, num_gpus=2, current={"num_gpus": 2})
    assert pf.settings.get("enable_cfg_parallel") in (None, False)


def test_24gib_budget_offloads_encoders_and_computes_resident_layers():
    free = h100().devices[0].memory_free_bytes
    budget = parse_vram_budget("24GiB", free)
    _, _, p = plan_for("Wan2.1-T2V-14B-Diffusers", h100(), 832, 480, 81, budget=budget)
    c = changed(p)
    assert c["text_encoder_cpu_offload"] is True
    assert p.dit.offload and 0 < p.dit.resident_layers < 40
    assert p.predicted.vram_bytes <= budget
    # the count is the largest that fits: one more layer would not
    m = model("Wan2.1-T2V-14B-Diffusers")
    assert p.predicted.vram_bytes + m.dit.layer_bytes[0] * 1.07 > budget or p.dit.prefetch_layers > 1
    r = c["dit_layerwise_resident_layers"]
    reason = next(ch.reason for ch in p.changes if ch.setting == "dit_layerwise_resident_layers")
    assert f"kept {r} of 40 DiT layers resident" in reason and "GiB budget" in reason


def test_qwen_image_on_rtx5090_resident_count_matches_issue_31538():
    # #31538: 34 resident layers ran, 38 OOM on a 32 GB RTX 5090. Its denoise times fix the shape:
    # 34 resident took 33.97 s = 0.68 s/step over 50 steps = 11.3 ms a block, one pass per step
    # (the model gives 13.7 ms at 1024^2, 25 ms at 1328^2); streaming it all took 56.6 s.
    _, wl, p = plan_for("Qwen-Image", card("rtx-5090-32gb.json"), 1024, 1024, guidance_scale=1.0)
    assert wl.cfg_passes == 1
    assert p.dit.offload
    assert 30 <= p.dit.resident_layers <= 37
    assert p.settings["text_encoder_cpu_offload"] is True


def test_memory_mode_uses_less_vram_and_still_hides_copies():
    _, _, fast = plan_for("Wan2.1-T2V-14B-Diffusers", h100(), 832, 480, 81)
    _, _, small = plan_for("Wan2.1-T2V-14B-Diffusers", h100(), 832, 480, 81, performance_mode="memory")
    assert not fast.dit.offload  # fits on 80 GB
    assert small.dit.offload and small.predicted.vram_bytes < fast.predicted.vram_bytes / 2
    assert small.predicted.exposed_copy_ms <= 0.02 * small.predicted.step_ms
    assert small.objective == "memory"


def test_manual_mode_changes_nothing_but_reports():
    _, _, p = plan_for("Wan2.2-T2V-A14B-Diffusers", h100(), 1280, 720, 81, performance_mode="manual")
    assert p.changes == []
    assert any("would set dit_layerwise_offload" in n for n in p.notes)


@pytest.mark.parametrize("platform", ["cpu", "mps", "rocm"])
def test_non_cuda_platform_never_offloads(platform):
    _, _, p = plan_for("Wan2.2-T2V-A14B-Diffusers", h100(), 1280, 720, 81, platform=platform)
    assert p.changes == [] and not p.dit.offload
    assert "dit_layerwise_offload" not in p.settings


PIN_CHOICES = {
    "dit_layerwise_offload": [True, False],
    "dit_layerwise_resident_layers": [0, 5, 20],
    "dit_offload_prefetch_size": [0.0, 2.0],
    "dit_layerwise_residency_policy": ["leading", "strided"],
    "text_encoder_cpu_offload": [True, False],
    "vae_cpu_offload": [True, False],
    "dit_cpu_offload": [True, False],
    "enable_torch_compile": [True, False],
    "enable_cfg_parallel": [True, False],
    "enable_attention_backend_autotune": [False],
    "attention_backend": ["torch_sdpa"],
}


def test_pinned_flags_never_change():
    rng = random.Random(7)
    cases = [("Wan2.1-T2V-14B-Diffusers", 832, 480, 81, "24GiB"), ("FLUX.1-dev", 1024, 1024, 1, None),
             ("Qwen-Image", 1024, 1024, 1, "0.4")]
    gpu = h100(2)
    free = gpu.devices[0].memory_free_bytes
    for i in range(18):
        name, w, h, f, budget = cases[i % len(cases)]
        keys = rng.sample(sorted(PIN_CHOICES), rng.randint(1, 5))
        pinned = {k: rng.choice(PIN_CHOICES[k]) for k in keys}
        num_gpus = rng.choice([1, 2])
        mode = rng.choice(["auto", "speed", "memory"])
        _, _, p = plan_for(name, gpu, w, h, f, pinned=pinned, current=dict(pinned, num_gpus=num_gpus),
                           budget=parse_vram_budget(budget, free) if budget else None,
                           num_gpus=num_gpus, performance_mode=mode)
        touched = {c.setting for c in p.changes}
        assert not touched & set(pinned), (pinned, touched)
        # the DiT decision obeys the pins it depends on
        if pinned.get("dit_layerwise_offload") is False:
            assert not p.dit.offload
        if p.dit.offload and "dit_layerwise_resident_layers" in pinned:
            assert p.dit.resident_layers == pinned["dit_layerwise_resident_layers"]
        if p.dit.offload and "dit_layerwise_residency_policy" in pinned:
            assert p.dit.policy == pinned["dit_layerwise_residency_policy"]
        # where a pin differs from the plan's choice, a note says so
        for k, v in pinned.items():
            if k in p.settings and p.settings[k] != v and not (
                    isinstance(v, float) and float(p.settings[k]) == v):
                assert any(k in n for n in p.notes), (k, v, p.settings[k], p.notes)


def test_pinned_dit_flags_report_the_predicted_cost():
    _, _, p = plan_for("FLUX.1-dev", h100(), 1024, 1024, pinned={"dit_layerwise_offload": True},
                       current={"dit_layerwise_offload": True})
    assert p.dit.offload
    note = next(n for n in p.notes if n.startswith("pinned DiT flags"))
    assert "would have chosen the DiT fully resident" in note and "ms per step" in note


def test_unchanged_values_are_not_changes():
    _, _, first = plan_for("FLUX.1-dev", h100(), 1024, 1024)
    current = dict(first.settings)
    _, _, again = plan_for("FLUX.1-dev", h100(), 1024, 1024, current=current)
    assert again.changes == []


def test_every_reason_has_numbers():
    for args in [("Wan2.2-T2V-A14B-Diffusers", 1280, 720, 81), ("FLUX.1-dev", 1024, 1024, 1)]:
        _, _, p = plan_for(args[0], h100(), *args[1:])
        assert p.changes
        for c in p.changes:
            assert c.reason and any(ch.isdigit() for ch in c.reason), c


def test_json_round_trip():
    _, _, p = plan_for("Wan2.2-T2V-A14B-Diffusers", h100(), 1280, 720, 81)
    d = json.loads(json.dumps(plan_to_json_dict(p)))
    assert Plan.from_dict(d) == p
    assert {"setting", "before", "after", "reason"} <= set(d["changes"][0])
    assert d["dit"]["resident_layers"] == p.dit.resident_layers
    assert d["dit"]["prefetch_layers"] == p.dit.prefetch_layers
    assert "step_ms" in d["predicted"] and "exposed_copy_ms" in d["predicted"]
    text = format_plan(p)
    assert "layerwise" in text and "dit_layerwise_resident_layers" in text


def test_attention_autotune_only_on_validated_archs():
    _, _, a100 = plan_for("FLUX.1-dev", card("a100-sxm4-80gb.json"), 1024, 1024)
    _, _, hop = plan_for("FLUX.1-dev", h100(), 1024, 1024)
    assert "enable_attention_backend_autotune" not in a100.settings
    assert hop.settings["enable_attention_backend_autotune"] is True
    assert "attention_backend" not in hop.settings  # sglang's default already picks FA


def test_lossy_options_only_when_opted_in():
    cur = {"available_attention_backends": ["fa", "torch_sdpa", "sage_attn"]}
    _, _, plain = plan_for("FLUX.1-dev", h100(), 1024, 1024, current=cur)
    _, _, lossy = plan_for("FLUX.1-dev", h100(), 1024, 1024, current=cur, lossy=True)
    assert "attention_backend" not in changed(plain)
    assert changed(lossy)["attention_backend"] == "sage_attn"


def test_compile_is_opt_in_and_the_plan_says_why():
    # max-autotune compile left a first request unfinished after 290 s on an H200: never turned on unasked
    _, _, p = plan_for("FLUX.1-dev", h100(), 1024, 1024)
    assert "enable_torch_compile" not in changed(p)
    assert any("SGLANG_AUTOPERF_COMPILE=1" in n and "torch.compile left off" in n for n in p.notes)
    # a user who set the flag is not lectured (and never overridden)
    _, _, pinned = plan_for("FLUX.1-dev", h100(), 1024, 1024, pinned={"enable_torch_compile": False})
    assert not any("torch.compile left off" in n for n in pinned.notes)


def test_one_shot_generate_does_not_pay_for_compile():
    # sglang generate serves one request: ~1 s saved cannot repay minutes of compile
    _, _, served = plan_for("FLUX.1-dev", h100(), 1024, 1024, allow_compile=True)
    assert served.settings["enable_torch_compile"] is True
    m = model("FLUX.1-dev")
    once = make_plan(gpu=h100(), model=m, workload=workload_for(m, 1024, 1024), pinned={}, current={},
                     budget_bytes=None, expected_requests=1, allow_compile=True)
    assert once.settings["enable_torch_compile"] is False
    reason = next(c.reason for c in once.changes if c.setting == "enable_torch_compile")
    assert "1 request(s)" in reason and "compile" in reason


# ---- planning cost is linear in the number of blocks ------------------------------------------------

def _wan_with_blocks(blocks: int):
    """Wan2.1-14B with its 40 blocks re-cut into `blocks` equal ones: same DiT size, longer list."""
    m = model("Wan2.1-T2V-14B-Diffusers")
    d, g = m.dit, m.dit.block_groups[0]
    each_bytes, each_params = sum(g.block_bytes) // blocks, sum(g.block_params) // blocks
    group = dataclasses.replace(g, count=blocks, block_bytes=(each_bytes,) * blocks,
                                block_params=(each_params,) * blocks)
    dit = dataclasses.replace(d, block_groups=(group,), layer_bytes=group.block_bytes,
                              layer_params=group.block_params,
                              total_bytes=d.non_block_bytes + each_bytes * blocks)
    return dataclasses.replace(m, dit=dit, dits={"transformer": dit})


def block_evaluations(monkeypatch, blocks: int) -> tuple[int, Plan]:
    """Blocks visited by the cost model's per-candidate functions while planning one request."""
    visited = [0]
    simulate, placed = cost.simulate_step, cost.dit_placed_bytes

    def counting_simulate(layers, *args, **kw):
        visited[0] += len(layers)
        return simulate(layers, *args, **kw)

    def counting_placed(dits, *args, **kw):
        dits = list(dits)
        visited[0] += sum(g.count for d in dits for g in d.block_groups)
        return placed(dits, *args, **kw)

    monkeypatch.setattr(cost, "simulate_step", counting_simulate)
    monkeypatch.setattr(cost, "dit_placed_bytes", counting_placed)
    m = _wan_with_blocks(blocks)
    wl = workload_for(m, 832, 480, num_frames=81)
    plan = make_plan(h100(), m, wl, {}, {}, 40 * GiB)
    monkeypatch.undo()
    return visited[0], plan


def test_planning_cost_is_linear_in_blocks(monkeypatch):
    small, p100 = block_evaluations(monkeypatch, 100)
    large, p1000 = block_evaluations(monkeypatch, 1000)
    assert 9.0 <= large / small <= 11.0, (small, large)
    for p, n in ((p100, 100), (p1000, 1000)):  # still a real plan: 28 GB of DiT streamed within 40 GiB
        assert p.dit.offload and p.dit.total_layers == n
        assert 0 < p.dit.resident_layers < n and p.predicted.vram_bytes <= 40 * GiB


def test_a_plan_over_budget_never_says_it_kept_the_dit_within_it():
    """The demo-sized Wan on an H200 profile with a 1 GiB budget: nothing fits, and the reason for
    keeping the DiT resident says so instead of '1.7 of 1.0 GiB budget'."""
    import tempfile

    from sglang_autoperf.demo_model import build_demo_model
    from sglang_autoperf.plan.planner import make_plan
    from sglang_autoperf.probe.gpu import bundled_profile_path, profile_from_snapshot
    from sglang_autoperf.probe.model import probe_model
    from sglang_autoperf.probe.workload import workload_for

    with tempfile.TemporaryDirectory() as tmp:
        model = probe_model(build_demo_model(f"{tmp}/demo"))
    plan = make_plan(gpu=profile_from_snapshot(bundled_profile_path("h200")), model=model,
                     workload=workload_for(model, 832, 480, num_frames=81), pinned={}, current={},
                     budget_bytes=1 << 30)
    assert plan.predicted.vram_bytes > plan.predicted.budget_bytes
    reason = next(c.reason for c in plan.changes if c.setting == "dit_layerwise_offload")
    assert reason.startswith("nothing fits the 1.0 GiB budget") and "of 1.0 GiB budget" not in reason
