"""The overlap monitor's hot path, on real torch modules with real forward hooks.

CUDA events cannot exist without a GPU, so the monitor's event factory is replaced by a clock
that counts in recording order (a test double for the one part that needs the hardware). The
manager is a stand-in carrying the attributes the adapter reads from sglang's
LayerwiseOffloadManager. What is checked: which hooks exist, that a layer's end is the next
layer's arrive, and that sampled steps are never read (a host sync) before the request ends."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from sglang_autoperf.measure import monitor as monitor_mod
from sglang_autoperf.measure.live import WorkerTuner
from sglang_autoperf.measure.monitor import OverlapMonitor
from sglang_autoperf.measure.trace import Placement
from sglang_autoperf.settings import Settings


class ClockEvent:
    """Records the order of record() calls; elapsed_time is the difference in that order."""
    clock = 0
    syncs = 0

    def __init__(self):
        self.t = None

    def record(self, stream=None):
        ClockEvent.clock += 1
        self.t = ClockEvent.clock

    def elapsed_time(self, other):
        return float(other.t - self.t)

    def synchronize(self):
        ClockEvent.syncs += 1


class Blocks(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(n))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _manager(model, n):
    return SimpleNamespace(model=model, layers_attr_str="blocks", prefetch_size=1, resident_layers=0,
                           residency_policy="leading", num_layers=n, enabled=False, device=None)


def _setup(monkeypatch, n=4):
    monkeypatch.setattr(monitor_mod, "_new_event", ClockEvent)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 0)
    ClockEvent.clock, ClockEvent.syncs = 0, 0
    model = Blocks(n)
    manager = _manager(model, n)
    mon = OverlapMonitor({"transformer": [manager]})
    assert not mon.attached and all(not b._forward_pre_hooks for b in model.blocks)  # none until asked
    mon.attach()
    mon.attach()  # idempotent
    return model, manager, mon


def test_one_end_hook_per_list_and_end_is_next_arrive(monkeypatch):
    model, manager, mon = _setup(monkeypatch, n=4)
    hooks = [len(b._forward_pre_hooks) + len(b._forward_hooks) for b in model.blocks]
    assert hooks == [2, 2, 2, 3]  # arrive + start on each layer, end only on the last
    mon.begin_step(1, Placement(0, 1, "leading"))
    with torch.no_grad():
        model(torch.ones(1, 4))
        model(torch.ones(1, 4))  # a second pass (CFG) is traced separately
    trace = mon.resolve(mon.end_step())
    assert [len(p.layers) for p in trace.passes] == [4, 4]
    first = trace.passes[0].layers
    # recording order per layer: arrive, start; the next layer's arrive closes it
    for a, b in zip(first, first[1:]):
        assert a.compute_end_ms == b.compute_start_ms - 1
        assert a.compute_end_ms > a.compute_start_ms
    assert first[-1].compute_end_ms == first[-1].compute_start_ms + 1  # its own end hook
    mon.detach()
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.blocks)


def test_sampled_steps_are_read_only_when_the_request_ends(monkeypatch, tmp_path):
    model, manager, mon = _setup(monkeypatch, n=3)
    tuner = object.__new__(WorkerTuner)
    tuner.monitor, tuner.calibration, tuner.primary = mon, None, [manager]
    tuner.settings = Settings(enabled=True, trace_dir=str(tmp_path), trace_every=2)
    tuner.request, tuner.recorded, tuner.unread, tuner.requests_seen = {"step": 0}, [], [], 0
    with torch.no_grad():
        for _ in range(6):
            tuner.run_step(model, (torch.ones(1, 4),), {})
    assert ClockEvent.syncs == 0  # no host sync on the hot path
    assert len(tuner.unread) == 2 and tuner.recorded == []  # steps 2 and 4 (step 0 never)
    tuner.read_sampled_steps()
    assert [t.step for t in tuner.recorded] == [2, 4] and tuner.unread == []
    assert ClockEvent.syncs == 2
