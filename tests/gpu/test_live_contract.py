"""The live path on sglang's real LayerwiseOffloadManager with CUDA streams and events (needs a GPU
and sglang): a placement change between forward passes is bit-exact, pinned knobs never move,
_disable puts the start placement back, a permanent-lifetime manager is refused up front.
tests/test_sglang_contract.py runs the same paths on the CPU through a host device double.

    python3 -m pytest -q -m gpu tests/gpu/test_live_contract.py
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.gpu


def _manager(lifetime="forward", layers=8, width=1024):
    import torch
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    class Dit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))

        def forward(self, x):
            for block in self.blocks:
                x = torch.tanh(block(x))
            return x

    torch.manual_seed(0)
    dit = Dit().to("cuda", torch.bfloat16)
    x = torch.randn(64, width, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        reference = dit(x).clone()
    manager = lo.LayerwiseOffloadManager(dit, layers_attr_str="blocks", num_layers=layers, enabled=True,
                                         prefetch_size=2, resident_layers=1, residency_policy="strided",
                                         residency_lifetime=lifetime)
    assert manager.enabled

    def forward_matches() -> bool:
        with torch.no_grad():
            manager.prepare_for_next_req(non_blocking=True)
            out = dit(x)
            torch.cuda.synchronize()
            return torch.equal(out, reference)
    return manager, forward_matches


def test_placement_changes_between_forwards_are_bit_exact():
    from sglang_autoperf.sglang_adapter import contract as sa

    manager, forward_matches = _manager()
    assert forward_matches()
    for resident, prefetch, policy in ((4, 3, "leading"), (0, 1, "leading"), (8, 2, "strided"), (1, 2, "strided")):
        sa.set_manager_placement(manager, prefetch_layers=prefetch, resident_layers=resident, policy=policy)
        assert sa.manager_setting(manager)["resident_layers"] == resident
        assert forward_matches() and forward_matches()


def test_pinned_knobs_hold_and_disable_restores_on_the_gpu(tmp_path, monkeypatch):
    from sglang_autoperf.sglang_adapter import contract as sa
    from sglang_autoperf.measure import live
    from sglang_autoperf.trace import Placement
    from sglang_autoperf.settings import Settings

    manager, forward_matches = _manager()
    identity = {"rank": 0, "performance_mode": "auto",
                "pinned": ["dit_layerwise_resident_layers", "dit_offload_prefetch_size"]}
    tuner = live.WorkerTuner(SimpleNamespace(), Settings(enabled=True, cache_dir=str(tmp_path)),
                             {"transformer": [manager]}, identity, monitor=SimpleNamespace(detach=lambda: None),
                             cache=object(), fixed=sa.pinned_placement_knobs(identity["pinned"]),
                             policies=sa.residency_policies())
    start = tuner.placement()
    tuner.apply(Placement(6, 6, "leading"))
    assert tuner.placement() == Placement(1, 2, "leading") and forward_matches()
    tuner.calibration = SimpleNamespace(baseline=start)
    run = live.LiveRun()
    run.install(tuner)
    run.disable("test", RuntimeError("ours"))
    assert run.tuner is None and tuner.placement() == start and forward_matches()


def test_permanent_lifetime_is_refused_before_any_change():
    from sglang_autoperf.sglang_adapter import contract as sa

    manager, forward_matches = _manager("permanent")
    assert "permanent" in sa.managers_live_blocker({"transformer": [manager]})
    with pytest.raises(RuntimeError, match="residency-lifetime forward"):
        sa.set_manager_placement(manager, prefetch_layers=2, resident_layers=3, policy="leading")
    assert forward_matches()
