"""plan/layout.py: communication volumes against hand computations, the link read from NVML
snapshots, validity rules, pinned flags, and the layout chosen on 2 and 4 GPUs (issue 20)."""
import dataclasses

import pytest

from sglang_autoperf.plan import layout as L
from sglang_autoperf.plan.planner import make_plan
from sglang_autoperf.probe.workload import workload_for
from test_cost_model import card, h100, model

GiB = 1024**3
WAN14 = "Wan2.1-T2V-14B-Diffusers"
H200X2 = "h200-141gb-2x-recorded-2026-11-27.json"  # recorded on the 2x H200 machine: 18 NVLink4 links each


def h200(n: int):
    """n H200s on the recorded NVSwitch fabric (the recording has 2; more are copies of GPU 0)."""
    p = card(H200X2)
    d = p.devices[0]
    return dataclasses.replace(p, devices=tuple(dataclasses.replace(d, index=i) for i in range(n)))


def wan_480p():
    m = model(WAN14)
    return m, workload_for(m, 832, 480, num_frames=81)


def flux_1024():
    m = model("FLUX.1-dev")
    return m, workload_for(m, 1024, 1024)


def choose(m, wl, gpu, n, budget=140 * GiB, pinned=None, current=None, backend=None):
    d = gpu.devices[0]
    cur = dict(current or {})
    if backend:
        cur["attention_backend"] = backend
    return L.choose_layout(m, wl, gpu.devices[:n], n, pinned or {}, cur, budget, d.bf16_dense_flops,
                           d.h2d_bytes_per_s, wl.cfg_passes >= 2)


def cost_of(choice, label):
    return next(c for c in choice.costs if c.layout.label == label)


# --- volumes by hand: Wan2.1-14B, 832x480, 81 frames -----------------------------------------------
# tokens: latent frames (81-1)/4+1 = 21; latent grid 480/8 = 60 x 832/8 = 104; patch (1,2,2):
#   21 x 30 x 52 = 32,760 tokens. Hidden 5120, bf16 (2 bytes), 40 blocks, 2 CFG passes.
S, H, B, LAYERS = 32_760, 5_120, 2, 40


def test_wan14b_shape_is_the_hand_computed_one():
    m, wl = wan_480p()
    assert (wl.tokens_per_pass, m.dit.hidden_size, m.dit.num_layers, wl.cfg_passes) == (S, H, LAYERS, 2)


def test_per_layer_volumes_by_hand():
    # Ulysses 2: Q, K, V in and the output back = 4 tensors of 16,380 x 5120 x 2 B = 167,731,200 B
    # each; half of each goes to the other GPU: 4 x 167,731,200 / 2 = 335,462,400 B.
    assert L.ulysses_bytes(S, H, B, 2) == 335_462_400
    # Ulysses 4: each GPU holds 8,190 tokens; 3/4 of 4 tensors of 83,865,600 B leave: 251,596,800 B.
    assert L.ulysses_bytes(S, H, B, 4) == 251_596_800
    # ring 2: the K and V shards (167,731,200 B each) go once to the neighbour: 335,462,400 B.
    assert L.ring_bytes(S, H, B, 2) == 335_462_400
    # ring 4: shards of 83,865,600 B, K and V, passed 3 times: 6 x 83,865,600 = 503,193,600 B.
    assert L.ring_bytes(S, H, B, 4) == 503_193_600
    # K/V-gather 4: the same K and V shards to each of the 3 others: 503,193,600 B.
    assert L.kv_gather_bytes(S, H, B, 4) == 503_193_600
    # Ulysses 2 x ring 2 on 4 GPUs: Ulysses over the 16,380 tokens of a ring member (8,190 per GPU):
    # 4 x 8,190 x 5120 x 2 / 2 = 167,731,200 B; then ring passes K and V of 2,560 channels:
    # 2 x 16,380 x 2,560 x 2 x 1 = 167,731,200 B; 335,462,400 B in all.
    assert L.sp_bytes_per_layer(S, H, B, L.Layout(1, 2, 2, 1)) == 335_462_400


def test_step_volumes_by_hand_on_two_h200s():
    m, wl = wan_480p()
    ch = choose(m, wl, h200(2), 2)
    # Ulysses 2 runs both CFG passes on each GPU: 335,462,400 B x 40 blocks x 2 passes.
    assert cost_of(ch, "ulysses2").comm_bytes == 335_462_400 * 40 * 2 == 26_836_992_000
    # CFG-parallel: one gather of the noise prediction per step: 16 latent channels x 21 x 60 x 104
    # = 2,096,640 elements x 2 B, sent to the one other rank: 4,193,280 B.
    assert cost_of(ch, "cfg2").comm_bytes == 4_193_280
    # CFG-parallel + FSDP: each GPU's one pass gathers the half of the DiT it does not hold.
    assert cost_of(ch, "cfg2+fsdp").comm_bytes == 4_193_280 + int(m.dit.total_bytes / 2)
    # The DiT is ~28 GB (docs/measured.md §1: 40 x 0.70 GB blocks), so that half is ~14 GB.
    assert 13.5e9 < m.dit.total_bytes / 2 < 14.5e9


def test_link_from_nvml_snapshots():
    nv = L.link_between(h200(2).devices)
    # 18 active NVLink4 links x 25 GB/s a direction x the NCCL efficiency prior
    assert nv.bytes_per_s == pytest.approx(18 * 25e9 * L.NCCL_LINK_EFFICIENCY)
    assert "NVLink4" in nv.kind
    pcie = L.link_between(h100(2).devices)  # the H100 recording reports no NVLink
    assert "PCIe" in pcie.kind and pcie.bytes_per_s == h100(2).devices[0].h2d_bytes_per_s
    assert L.link_between(h200(1).devices).bytes_per_s == 0


# --- validity ------------------------------------------------------------------------------------

def test_validity_rules():
    ok = L.Layout(1, 4, 1, 1)
    assert L.layout_problem(ok, 4, 40, runs_cfg=True) is None
    assert "heads" in L.layout_problem(L.Layout(1, 3, 1, 1), 3, 40, runs_cfg=False)  # 40 % 3
    assert "multiply" in L.layout_problem(L.Layout(2, 2, 1, 1), 2, 40, runs_cfg=True)
    assert "K/V-gather" in L.layout_problem(L.Layout(1, 2, 1, 2), 4, 40, runs_cfg=True)
    assert "CFG" in L.layout_problem(L.Layout(2, 1, 1, 1), 2, 24, runs_cfg=False)
    assert "ring" in L.layout_problem(L.Layout(1, 1, 2, 1), 2, 24, runs_cfg=False, attention_backend="torch_sdpa")
    assert L.layout_problem(L.Layout(1, 1, 2, 1), 2, 24, runs_cfg=False, attention_backend="fa") is None


def test_without_cfg_cfg_parallel_is_never_chosen():
    m, wl = flux_1024()  # guidance-distilled: one pass per step
    for n in (2, 4):
        ch = choose(m, wl, h200(n), n)
        assert ch.layout.cfg == 1
        assert all(c.layout.cfg == 1 for c in ch.costs)


# --- pinned flags --------------------------------------------------------------------------------

def test_pinned_flags_are_kept():
    m, wl = wan_480p()
    ch = choose(m, wl, h200(2), 2, pinned={"enable_cfg_parallel": False})
    assert ch.layout.cfg == 1 and all(c.layout.cfg == 1 for c in ch.costs)
    ch = choose(m, wl, h200(4), 4, pinned={"ulysses_degree": 4})
    assert ch.layout.ulysses == 4
    ch = choose(m, wl, h200(2), 2, pinned={"use_fsdp_inference": True})
    assert ch.layout.fsdp


def test_pins_no_layout_keeps_leave_it_to_sglang():
    m, wl = flux_1024()
    ch = choose(m, wl, h200(2), 2, pinned={"enable_cfg_parallel": True})  # FLUX runs no CFG
    assert ch.costs == [] and ch.notes


def test_the_plan_never_changes_a_pinned_layout_flag():
    m, wl = wan_480p()
    p = make_plan(h200(2), m, wl, {"enable_cfg_parallel": False}, {"num_gpus": 2}, None, num_gpus=2)
    assert "enable_cfg_parallel" not in {c.setting for c in p.changes}
    assert p.settings["enable_cfg_parallel"] is False


# --- the choice on 2 and 4 GPUs -----------------------------------------------------------------

@pytest.mark.parametrize("name,w,h,f", [(WAN14, 832, 480, 81), ("Qwen-Image", 1024, 1024, 1)])
def test_cfg_parallel_beats_sequence_parallel_on_two_gpus_as_measured(name, w, h, f):
    """docs/measured.md §3 (#22763, 2x H200): CFG-parallel beat sequence parallel for Wan-14B
    (23.75 -> 21.27 s) and Qwen-Image (11.21 -> 7.14 s)."""
    m = model(name)
    wl = workload_for(m, w, h, num_frames=f)
    ch = choose(m, wl, h200(2), 2)
    assert ch.layout == L.Layout(cfg=2)
    assert cost_of(ch, "cfg2").step_s < min(cost_of(ch, "ulysses2").step_s, cost_of(ch, "kvgather2").step_s)


def test_wan14b_on_four_gpus_keeps_cfg_parallel_and_splits_the_rest():
    m, wl = wan_480p()
    ch = choose(m, wl, h200(4), 4)
    assert ch.layout.cfg == 2 and ch.layout.sp == 2 and not ch.layout.fsdp
    assert ch.passes_per_gpu == 1


def test_with_nvlink_ulysses_beats_fsdp_and_kv_gather_on_four_gpus_when_the_model_fits():
    m, wl = flux_1024()
    ch = choose(m, wl, h200(4), 4, backend="fa")
    assert ch.layout == L.Layout(1, 4, 1, 1)
    # at degree 4 Ulysses sends 0.75 S x H x 2 B per layer, K/V-gather and ring 1.5
    assert cost_of(ch, "ulysses4").step_s < cost_of(ch, "kvgather4").step_s
    assert cost_of(ch, "ulysses4").step_s < cost_of(ch, "ring4").step_s


def test_over_pcie_fsdp_costs_what_its_gathers_take():
    m, wl = flux_1024()
    ch = choose(m, wl, h100(2), 2, budget=70 * GiB)
    # 23.8 GB DiT: each pass gathers ~11.9 GB over ~51 GB/s (~230 ms) against ~90 ms of compute
    assert cost_of(ch, "kvgather2+fsdp").step_s > cost_of(ch, "kvgather2").step_s + 0.1
    assert not ch.layout.fsdp


def test_a_small_budget_chooses_fsdp_then_offload():
    m, wl = wan_480p()
    full = choose(m, wl, h200(2), 2)
    need = min(c.vram_bytes for c in full.costs if not c.layout.fsdp)
    need_fsdp = min(c.vram_bytes for c in full.costs if c.layout.fsdp)
    assert need_fsdp < need
    ch = choose(m, wl, h200(2), 2, budget=(need + need_fsdp) // 2)  # only FSDP fits resident
    assert ch.layout.fsdp and ch.fsdp_shards == 2
    p = make_plan(h200(2), m, wl, {}, {"num_gpus": 2}, (need + need_fsdp) // 2, num_gpus=2)
    assert p.settings["use_fsdp_inference"] is True and p.dit.offload is False
    assert p.predicted.vram_bytes <= p.predicted.budget_bytes
    tiny = need_fsdp - 2 * GiB  # not even FSDP fits: no FSDP, the DiT streamed instead
    ch = choose(m, wl, h200(2), 2, budget=tiny)
    assert not ch.layout.fsdp
    p = make_plan(h200(2), m, wl, {}, {"num_gpus": 2}, tiny, num_gpus=2)
    assert p.settings["use_fsdp_inference"] is False and p.dit.offload is True


def test_sglangs_default_wins_ties():
    m, wl = flux_1024()
    ch = choose(m, wl, h200(2), 2)  # K/V-gather, Ulysses and ring all send the same bytes at degree 2
    assert ch.layout == L.Layout(1, 1, 1, 2)  # sglang's own choice at sequence-parallel 2


# --- a measured layout wins ----------------------------------------------------------------------

def test_a_measured_layout_replaces_the_prediction():
    m, wl = wan_480p()
    ch = choose(m, wl, h200(2), 2, current={L.MEASURED_LAYOUT_KEY: "ulysses2"})
    assert ch.layout == L.Layout(1, 2, 1, 1) and "measured" in ch.reason
    assert ch.passes_per_gpu == 2


def test_a_measured_layout_that_is_not_allowed_is_ignored_with_a_note():
    m, wl = flux_1024()
    ch = choose(m, wl, h200(2), 2, current={L.MEASURED_LAYOUT_KEY: "cfg2"})  # FLUX runs no CFG
    assert ch.layout.cfg == 1 and any("cfg2" in n for n in ch.notes)
    m, wl = wan_480p()
    ch = choose(m, wl, h200(2), 2, pinned={"enable_cfg_parallel": True},
                current={L.MEASURED_LAYOUT_KEY: "ulysses2"})  # the pin rules it out
    assert ch.layout.cfg == 2


def test_prefer_measured_keeps_a_matching_prediction_unchanged():
    m, wl = wan_480p()
    ch = choose(m, wl, h200(2), 2)
    same = L.prefer_measured(ch, ch.layout.label, [c.layout for c in ch.costs], wl, True)
    assert same is ch and not same.notes
