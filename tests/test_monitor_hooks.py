"""The overlap monitor's hot path, on real torch modules with real forward hooks, and the
calibration flow of a warmup request driven through the real WorkerTuner.

CUDA events cannot exist without a GPU, so the monitor's event factory is replaced by a clock
that counts in recording order (a test double for the one part that needs the hardware). The
manager is a stand-in carrying the attributes the adapter reads from sglang's
LayerwiseOffloadManager. What is checked: which hooks exist, that a layer's end is the next
layer's arrive, that sampled steps are never read (a host sync) before the request ends, and the
order and decision of a calibration (step traces recorded on an H200, step times scripted)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sglang_autoperf.cache import StepSummary, TuningCache
from sglang_autoperf.measure import monitor as monitor_mod
from sglang_autoperf.measure.live import WorkerTuner
from sglang_autoperf.measure.monitor import OverlapMonitor
from sglang_autoperf.trace import Placement, TraceRecording
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
        self.stream = stream

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


COMPUTE_STREAM = "compute stream"  # what the test's current stream is


def _no_cuda(monkeypatch):
    """The CUDA parts of the monitor, replaced (no GPU here)."""
    monkeypatch.setattr(monitor_mod, "_new_event", ClockEvent)
    monkeypatch.setattr(monitor_mod, "_record_function", lambda: ClockEvent.record)
    monkeypatch.setattr(monitor_mod, "_current_stream", lambda: COMPUTE_STREAM)
    monkeypatch.setattr(monitor_mod, "_memory_after_step", lambda: {})
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)


def _setup(monkeypatch, n=4):
    _no_cuda(monkeypatch)
    ClockEvent.clock, ClockEvent.syncs = 0, 0
    model = Blocks(n)
    manager = _manager(model, n)
    mon = OverlapMonitor({"transformer": [manager]})
    assert not mon.attached and all(not b._forward_pre_hooks for b in model.blocks)  # none until asked
    mon.attach()
    mon.attach()  # idempotent
    return model, manager, mon


class StreamingManager:
    """Stands in for sglang's LayerwiseOffloadManager with the attributes the adapter reads and
    its hook protocol: per layer a pre-hook and a post-hook whose handles it keeps in
    `_forward_hooks` (pre, post), as sglang's register_forward_hooks does; the pre-hook loads a
    missing layer synchronously, then prefetches the next layer (wrapping to layer 0, which is how
    the next step's first layer is copied during this step); a copy records a new event in
    `_prefetch_events`; the post-hook releases streamed layers."""

    def __init__(self, model, n, resident=()):
        self.model, self.layers_attr_str, self.num_layers = model, "blocks", n
        self.prefetch_size, self.resident_layers, self.residency_policy = 1, len(resident), "leading"
        self.enabled, self.device, self.copy_stream = True, "cuda", object()
        self._gpu_layers, self._prefetch_events = set(resident), {}
        self._retained_set, self._permanent_set = frozenset(resident), frozenset()
        self._weight_metadata = {i: {"w": {"numel": 1000, "dtype": torch.bfloat16}} for i in range(n)}
        self._forward_hooks = []
        for i, layer in enumerate(model.blocks):
            self._forward_hooks.append(layer.register_forward_pre_hook(self._pre(i)))
            self._forward_hooks.append(layer.register_forward_hook(self._post(i)))

    def prefetch_layer(self, i, non_blocking=True):
        if i in self._gpu_layers:
            return
        self._gpu_layers.add(i)
        self._prefetch_events[i] = object()

    def _pre(self, i):
        def hook(module, args):
            self.prefetch_layer(i)  # a layer not prefetched in time is loaded now (synchronously)
            self.prefetch_layer((i + 1) % self.num_layers)
        return hook

    def _post(self, i):
        def hook(module, args, output):
            if i not in self._retained_set:
                self._gpu_layers.discard(i)
                self._prefetch_events.pop(i, None)
        return hook


def test_one_end_hook_per_list_and_end_is_next_arrive(monkeypatch):
    """A manager without pre-hooks of its own: the monitor's layer function becomes a hook."""
    model, manager, mon = _setup(monkeypatch, n=4)
    hooks = [len(b._forward_pre_hooks) + len(b._forward_hooks) for b in model.blocks]
    assert hooks == [1, 1, 1, 2]  # one per layer, end only on the last
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
        assert a.compute_end_ms > a.compute_start_ms and a.stall_ms == 1.0
    assert first[-1].compute_end_ms == first[-1].compute_start_ms + 1  # its own end hook
    assert ClockEvent.clock == 2 * (2 * 4 + 1) + 2  # arrive + start per layer, 1 end a pass, step start/end
    mon.detach()
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.blocks)


def test_the_layer_function_takes_sglangs_pre_hook_place_and_detach_puts_it_back(monkeypatch):
    """No hook of ours for torch to dispatch per layer: the events go around sglang's own pre-hook
    (found through the handles the manager keeps), which still runs, between arrive and start."""
    _no_cuda(monkeypatch)
    model = Blocks(3)
    manager = StreamingManager(model, 3)
    sglang_hooks = [dict(b._forward_pre_hooks) for b in model.blocks]
    mon = OverlapMonitor({"transformer": [manager]})
    mon.attach()
    assert [len(b._forward_pre_hooks) for b in model.blocks] == [1, 1, 1]
    assert [len(b._forward_hooks) for b in model.blocks] == [1, 1, 2]  # sglang's post-hooks + our end
    assert all(dict(b._forward_pre_hooks) != h for b, h in zip(model.blocks, sglang_hooks))
    mon.begin_step(0, Placement(0, 1, "leading"))
    with torch.no_grad():
        model(torch.ones(1, 4))
    trace = mon.resolve(mon.end_step())
    assert manager._gpu_layers == {0}  # sglang's hooks ran: the wrap-around prefetch of layer 0
    assert [t.copy_bytes for t in trace.passes[0].layers] == [2000, 2000, 2000]
    mon.detach()
    assert [dict(b._forward_pre_hooks) for b in model.blocks] == sglang_hooks
    assert [len(b._forward_hooks) for b in model.blocks] == [1, 1, 1]


def test_wrap_finds_the_pre_hooks_of_sglangs_own_register_forward_hooks():
    """The adapter reads the handles sglang 0.5.23's real register_forward_hooks keeps: this
    breaks when sglang changes how it hooks its layers."""
    from sglang.multimodal_gen.runtime.managers.memory_managers.layerwise_offload import LayerwiseOffloadManager

    from sglang_autoperf.sglang_adapter import contract as sa

    model = Blocks(3)
    manager = SimpleNamespace(enabled=True, model=model, layers_attr_str="blocks", _forward_hooks=[])
    LayerwiseOffloadManager.register_forward_hooks(manager)
    originals = [next(iter(b._forward_pre_hooks.values())) for b in model.blocks]
    got = []
    undo = sa.wrap_layer_pre_hooks(manager, list(model.blocks), lambda i, hook: got.append((i, hook)) or (lambda m, a: None))
    assert got == list(enumerate(originals))
    assert all(len(b._forward_pre_hooks) == 1 and next(iter(b._forward_pre_hooks.values())) is not o
               for b, o in zip(model.blocks, originals))
    undo()
    assert [next(iter(b._forward_pre_hooks.values())) for b in model.blocks] == originals
    manager._forward_hooks[0].remove()  # sglang removed a hook meanwhile: undo does not resurrect it
    undo()
    assert len(model.blocks[0]._forward_pre_hooks) == 0


def test_a_copy_costs_one_event_and_its_start_is_derived(monkeypatch):
    """Layer 1 is resident; every other layer streams with prefetch 1. Recording order (the test
    clock) stands in for GPU time. A copy issued in the previous layer's pre-hook ends before its
    layer arrives; a copy issued in the layer's own pre-hook (loaded late) ends between its arrive
    and its start; layer 0 of the second step was copied during the first step (wrap-around)."""
    _no_cuda(monkeypatch)
    ClockEvent.clock = 0
    model = Blocks(4)
    manager = StreamingManager(model, 4, resident=(1,))
    mon = OverlapMonitor({"transformer": [manager]})
    mon.attach()
    traces = []
    for step in (0, 1):
        mon.begin_step(step, Placement(1, 1, "leading"))
        with torch.no_grad():
            model(torch.ones(1, 4))
        traces.append(mon.resolve(mon.end_step()))
    first, second = (t.passes[0].layers for t in traces)
    arrive = [layer.compute_start_ms - layer.stall_ms for layer in first]
    # step 0, layer 0 loaded in its own pre-hook: the copy ends after the arrive, before the start
    assert arrive[0] < first[0].copy_end_ms < first[0].compute_start_ms
    assert first[0].copy_start_ms == arrive[0]  # issued by layer 0's own pre-hook
    assert first[0].copy_bytes == 2000
    # layer 1 resident: no copy of its own; layers 2 and 3 were copied one layer ahead
    assert first[1].copy_end_ms is None and first[1].copy_bytes == 0
    for i in (2, 3):
        assert first[i].copy_end_ms < arrive[i] and first[i].copy_bytes == 2000
        assert first[i].copy_start_ms == arrive[i - 1]  # issued at the previous layer's arrive ...
    # ... or when the copy before it on the stream ended, whichever is later
    assert first[3].copy_start_ms >= first[2].copy_end_ms
    # step 1: layer 0 was copied during step 0: no copy this step, its wait still timed
    assert second[0].copy_end_ms is None and second[0].stall_ms > 0
    # events per step: 4 x (arrive + start) + 1 end + step start/end + one per copy
    assert ClockEvent.clock == (8 + 1 + 2 + 4) + (8 + 1 + 2 + 3)
    mon.detach()


def test_hot_path_records_on_the_steps_streams_and_finds_layers_once(monkeypatch):
    """Host time on the hot path is step time: the compute events go on the stream taken at the
    step's start (no current-stream lookup per layer), a copy's event on its copy stream, and a
    sampled step's attach/detach reuses the layer list found once (no named_modules() walk)."""
    _no_cuda(monkeypatch)
    lookups = []
    real_lookup = monitor_mod.sa.manager_layer_modules
    monkeypatch.setattr(monitor_mod.sa, "manager_layer_modules", lambda m: lookups.append(m) or real_lookup(m))
    recorded = []
    real_record = ClockEvent.record

    def record(self, stream=None):
        recorded.append(stream)
        real_record(self, stream)

    monkeypatch.setattr(ClockEvent, "record", record)
    model = Blocks(4)
    manager = StreamingManager(model, 4)
    mon = OverlapMonitor({"transformer": [manager]})
    for step in range(3):
        mon.attach()
        recorded.clear()
        mon.begin_step(step, Placement(0, 1, "leading"))
        with torch.no_grad():
            model(torch.ones(1, 4))
        mon.resolve(mon.end_step())
        mon.detach()
        copies = [s for s in recorded if s is manager.copy_stream]
        assert copies and all(s in (COMPUTE_STREAM, manager.copy_stream) for s in recorded)
        assert recorded.count(COMPUTE_STREAM) == 2 * 4 + 1 + 2
    assert lookups == [manager]


def test_prefetch_is_wrapped_only_while_attached_and_only_on_the_instance(monkeypatch):
    """Served steps (monitor detached) call sglang's own prefetch_layer: no code of ours per layer."""
    _no_cuda(monkeypatch)
    model = Blocks(4)
    manager, other = StreamingManager(model, 4), StreamingManager(Blocks(4), 4)
    mon = OverlapMonitor({"transformer": [manager]})
    assert "prefetch_layer" not in vars(manager)
    mon.attach()
    assert "prefetch_layer" in vars(manager) and "prefetch_layer" not in vars(other)
    assert StreamingManager.prefetch_layer.__qualname__ == "StreamingManager.prefetch_layer"  # class untouched
    mon.begin_step(0, Placement(0, 1, "leading"))
    with torch.no_grad():
        model(torch.ones(1, 4))
    pending = mon.end_step()
    assert sum(copy is not None for *_, copy in pending.layers) == 4  # sglang's hooks reached the wrapper
    mon.detach()
    assert "prefetch_layer" not in vars(manager)
    manager._gpu_layers.clear()
    mon.begin_step(1, Placement(0, 1, "leading"))  # armed but detached: nothing of ours may run
    with torch.no_grad():
        model(torch.ones(1, 4))
    pending = mon.end_step()
    assert pending.layers == [] and mon._copies == {} and manager._gpu_layers  # sglang's own method ran


def test_each_trace_carries_the_monitors_own_host_time(monkeypatch):
    """The scripted clock advances 1 us per reading. A sampled step counts its attach, begin, each
    layer's function (7 readings: 5 us of ours, 2 of them in the two event records; the reading
    after sglang's hook starts our second part), the list's end hook, its end and its detach; a
    step of a calibration (attached once, before its first step) counts no attach or detach of
    its own."""
    _no_cuda(monkeypatch)
    ticks = iter(range(0, 10**12, 1000))
    monkeypatch.setattr(monitor_mod, "perf_counter_ns", lambda: next(ticks))
    model = Blocks(3)
    mon = OverlapMonitor({"transformer": [_manager(model, 3)]})
    placement = Placement(0, 1, "leading")

    def step(i):
        mon.begin_step(i, placement)
        with torch.no_grad():
            model(torch.ones(1, 4))
        return mon.end_step()

    mon.attach()
    sampled = step(1)
    mon.detach()
    trace = mon.resolve(sampled)
    assert trace.monitor_host_ms == pytest.approx((1 + 1 + 3 * 5 + 1 + 1 + 1) * 1e-3)
    assert trace.monitor_record_ms == pytest.approx(3 * 2 * 1e-3)
    mon.attach()
    first = mon.resolve(step(2))
    second = mon.resolve(step(3))
    mon.detach()  # after the calibration's last step was read: counted nowhere
    assert first.monitor_host_ms == pytest.approx(19 * 1e-3)  # the calibration's one attach
    assert second.monitor_host_ms == pytest.approx(18 * 1e-3)
    summary = StepSummary.of([first, second])
    assert summary.monitor_ms == pytest.approx(18.5e-3)


def test_sampled_steps_are_read_only_when_the_request_ends(monkeypatch, tmp_path):
    model, manager, mon = _setup(monkeypatch, n=3)
    tuner = WorkerTuner(SimpleNamespace(), Settings(enabled=True, trace_dir=str(tmp_path), trace_every=2),
                        {"transformer": [manager]}, {"rank": 0}, monitor=mon, cache=object())
    tuner.request = {"step": 0}
    with torch.no_grad():
        for _ in range(6):
            tuner.run_step(model, (torch.ones(1, 4),), {})
    assert ClockEvent.syncs == 0  # no host sync on the hot path
    assert not mon.attached  # a sampled step takes its hooks away with it: untraced steps run none
    assert len(tuner.unread) == 2 and tuner.recorded == []  # steps 2 and 4 (step 0 never)
    tuner.read_sampled_steps()
    assert [t.step for t in tuner.recorded] == [2, 4] and tuner.unread == []
    assert ClockEvent.syncs == 2


# --- the calibration flow of a warmup request, with scripted step times -----------------------------

RECORDED = Path(__file__).parent / "fixtures" / "traces" / "h200-wan2.1-1.3b-17f-offload-prefetch1-2026-11-27.json"
START, R3P3, R0P8 = Placement(1, 2, "strided"), Placement(3, 3, "leading"), Placement(0, 8, "leading")


class ScriptedMonitor:
    """Step traces recorded on an H200 (fixture), with the step times each placement is given here."""

    def __init__(self, times: dict):
        self.times = {p: iter(t) for p, t in times.items()}
        self.base = TraceRecording.from_dict(json.loads(RECORDED.read_text())).steps[1]
        self.attached, self.order = False, []

    def attach(self):
        self.attached = True

    def detach(self):
        self.attached = False

    def begin_step(self, step, placement):
        self.current = (step, placement)
        self.order.append(placement)

    def end_step(self):
        return self.current

    def resolve(self, pending):
        step, placement = pending
        # more layers on the GPU, more VRAM (93 MB a Wan-1.3B block), as the monitor's peak shows
        peak = 600_000_000 + (placement.resident_layers + placement.prefetch_layers) * 92_887_552
        return replace(self.base, step=step, wall_ms=next(self.times[placement]), placement=placement,
                       peak_allocated_bytes=peak)


IDENTITY = {"rank": 0, "performance_mode": "auto", "pinned": ["dit_layerwise_offload"], "num_gpus": 1,
            "layout": "tp1", "lora": (), "sglang_version": "0.5.23", "torch_version": "2.11.0"}


def _tuner(tmp_path, times, *, identity=IDENTITY, fixed=frozenset(), start=START, propose=None):
    manager = _manager(Blocks(2), 30)
    manager.resident_layers, manager.prefetch_size, manager.residency_policy = (
        start.resident_layers, start.prefetch_layers, start.policy)
    plan = SimpleNamespace(model_fingerprint="fp", gpu_key={"name": "NVIDIA H200"}, budget_bytes=None)
    tuner = WorkerTuner(plan, Settings(enabled=True, cache_dir=str(tmp_path)), {"transformer": [manager]}, identity,
                        monitor=ScriptedMonitor(times), cache=TuningCache(str(tmp_path)), fixed=fixed,
                        policies=("leading", "strided"))
    tuner.applied = []

    def set_placement(m, *, prefetch_layers, resident_layers, policy):
        # what sglang_contract.set_manager_placement changes on sglang's manager (no GPU here)
        m.resident_layers, m.prefetch_size, m.residency_policy = resident_layers, prefetch_layers, policy
        tuner.applied.append(Placement(resident_layers, prefetch_layers, policy))
    tuner.set_placement = set_placement
    if propose is None:
        tuner._propose = lambda cal: [R3P3, R0P8]
    else:
        tuner._propose = propose
    return tuner


def _warmup(tuner, steps=15):
    tuner.begin_request({"width": 832, "height": 480, "num_frames": 17, "batch_size": 1, "cfg": True,
                         "is_warmup": True, "steps": steps})
    for _ in range(steps):
        tuner.run_step(lambda: None, (), {})
    tuner.end_request()


def test_calibration_measures_its_start_point_again_last_and_keeps_it_when_drift_explains_the_gain(tmp_path):
    # the step times of 2026-11-27 (H200, call 4): start point 181.2/207.1, R3P3 174.6/178.6; the
    # closing start-point steps (176.0/178.0) are what a card drifting faster gives
    tuner = _tuner(tmp_path, {START: [181.2, 207.1, 176.0, 178.0], R3P3: [174.6, 178.6], R0P8: [230.0, 231.0]})
    _warmup(tuner)
    assert tuner.monitor.order == [START, START, R3P3, R3P3, R0P8, R0P8, START, START]
    result = tuner.results[next(iter(tuner.results))]
    assert result.placement == START and tuner.placement() == START
    assert not tuner.monitor.attached  # no hooks while serving
    assert tuner.cache.get(tuner.key(next(iter(tuner.results)), 1)).placement == START


def test_calibration_switches_when_the_start_point_stays_slower(tmp_path):
    tuner = _tuner(tmp_path, {START: [194.0, 195.0, 193.0, 196.0], R3P3: [174.6, 178.6], R0P8: [230.0, 231.0]})
    _warmup(tuner)
    result = tuner.results[next(iter(tuner.results))]
    assert tuner.placement() == R3P3 and result.placement == R3P3
    # the table's before/after VRAM: the traced steps' peaks of the start point (R1 P2) and of R3 P3
    assert (result.baseline_vram_bytes, result.vram_bytes) == (600_000_000 + 3 * 92_887_552, 600_000_000 + 6 * 92_887_552)


def test_a_calibration_that_ends_all_resident_says_why_and_names_the_budget(tmp_path, caplog):
    """Offload pinned on (memory objective), the reference R30 measured fastest: the log says every
    layer stays resident, by how much streaming was slower, and how to cap VRAM; with a budget set
    it does not (the budget bounded what was tried)."""
    import logging

    r30 = Placement(30, 1, "leading")
    for budget, expect in ((None, True), (24 << 30, False)):
        tuner = _tuner(tmp_path / str(budget), {START: [181.2, 179.0, 180.1, 181.1], R3P3: [180.6, 181.0], r30: [169.1, 169.4]})
        tuner.plan.budget_bytes = budget
        tuner._propose = lambda cal: [R3P3, r30]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sglang.autoperf"):
            _warmup(tuner)
        assert tuner.placement() == r30
        notes = [r.getMessage() for r in caplog.records if "stay resident although layerwise offload is on" in r.getMessage()]
        assert bool(notes) == expect
        if expect:
            assert "resident=1 prefetch=2 strided, ran 180.6 ms/step, +6.7% vs 169.2 ms" in notes[0] and "SGLANG_AUTOPERF_VRAM_BUDGET" in notes[0]
