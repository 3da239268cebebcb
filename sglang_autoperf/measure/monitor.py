"""Overlap monitor: CUDA events around every offloaded layer's compute and H2D copy.

Few events and hooks, because in a launch-bound step their host time is step time. Measured on
H200s in the GPU sandbox, 2026-11-27 (paired against untraced neighbour steps): 4 events, a stream
wait and 3 hooks per layer 3.9% of a traced step; the layout below minus `start` 2.8%; the layout
below 1.7-2.5%, of which the monitor's own clock (`monitor_host_ms`) sees 1.3-1.5% (2.3-3.4 ms per
Wan-1.3B step of 60 layer passes, ~40 us a layer pass; the same code on a bare stack of layers:
~10 us, benchmarks/monitor_cost.py). Steps outside calibration or sampling carry none of it.
The layout:
- compute stream, per layer: `arrive` before sglang's pre-hook and `start` after it. Between the
  two, the compute stream waits for the layer's copy and the host runs sglang's prefetch code (the
  GPU runs dry while it does in a launch-bound step): `start - arrive` is the stall, copy wait and
  host time together, which is what the step pays. A layer's compute ends where the next one
  arrives; only a list's last layer has an end hook and event of its own.
- copy stream, per H2D copy: one `copy_end` event, where sglang records the event its pre-hook
  waits for. The copy cannot start before the copy stream is free (the previous copy's end) nor
  before the compute queued when it was issued (sglang makes the copy stream wait for it: the
  issuing layer's arrive), so its start is the later of the two, with no event or stream wait of
  ours (in a host-bound step that start is early by the host's lag: copy GB/s read low).
Events are only recorded on the hot path and read (which waits for them) after the step:
between steps while calibrating, at the request's end when sampling. The monitor also clocks its
own host time in each traced step (hooks, prefetch wrapper, step start/end, a sampled step's
attach/detach; one perf_counter pair each), so every trace says what tracing it cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from sglang_autoperf import sglang_adapter as sa
from sglang_autoperf.measure.trace import LayerTiming, PassTrace, Placement, StepTrace


def _new_event():
    import torch

    return torch.cuda.Event(enable_timing=True)


def _current_stream():
    import torch

    return torch.cuda.current_stream()


def _allocated_now_and_peak() -> tuple[int, int]:
    """One read of the allocator's stats: torch.cuda.memory_allocated() and max_memory_allocated()
    each build the whole stats dict, inside the step being timed."""
    import torch

    allocated = torch.cuda.memory_stats_as_nested_dict().get("allocated_bytes", {}).get("all", {})
    return int(allocated.get("current", 0)), int(allocated.get("peak", 0))


@dataclass
class _Copy:
    end: Any
    nbytes: int
    issuer: Any = None  # arrive event of the layer whose pre-hook issued the copy
    previous: Any = None  # end event of the copy before it on the same stream, this step


@dataclass
class _LayerEvents:
    arrive: Any = None
    start: Any = None
    end: Any = None  # only a list's last layer
    copy: _Copy | None = None


@dataclass
class _PendingStep:
    step: int
    placement: Placement
    start: Any
    end: Any = None
    # (component, layer list, num layers, pass index) -> layer index -> events
    passes: dict[tuple[str, str, int, int], dict[int, _LayerEvents]] = field(default_factory=dict)
    allocated: int = 0
    peak: int = 0
    host_ns: int = 0  # the monitor's own host time in this step
    record_ns: int = 0  # of which inside Event.record (a full launch queue would block there)


class OverlapMonitor:
    """One per worker. Its layer hooks exist only between `attach()` and `detach()` (calibrating or
    tracing), so served steps run no code of ours per layer; `begin_step`/`end_step` arm it for the
    steps to be traced."""

    def __init__(self, managers: dict[str, list]):
        self._managers = managers
        self._handles: list = []
        self._wrapped: list = []  # managers whose prefetch_layer goes through around_prefetch
        self._current: _PendingStep | None = None
        self._pass_index: dict[int, int] = {}  # id(manager) -> forward passes seen this step
        self._copies: dict[tuple[int, int], _Copy] = {}  # (id(manager), layer) -> copy not yet consumed
        self._last_copy: dict[int, Any] = {}  # id(copy stream) -> end event of its latest copy this step
        self._issuer: Any = None  # arrive event of the layer whose pre-hooks are running
        self._layer: _LayerEvents | None = None  # events of that layer
        self._layer_bytes: dict[tuple[int, int], int] = {}
        self._names: dict[int, tuple[str, str, int]] = {}
        # Looked up once: finding a layer list walks the whole model's named_modules(), and a
        # sampled step attaches and detaches the hooks around itself.
        self._layers: dict[int, list] = {}
        # The compute stream of the traced step, taken once per step: Event.record() without a
        # stream looks the current stream up again at every call (host time per layer).
        self._stream: Any = None
        self._attach_ns = 0  # a sampled step's attach, counted into the step it was made for
        self._last_pending: _PendingStep | None = None  # a sampled step's detach is counted into it
        # Creating a CUDA event costs host time, and in a launch-bound step host time is step
        # time: events are created once and reused after each step has been read.
        self._pool: list = []
        for component, group in managers.items():
            for manager in group:
                self._names[id(manager)] = (component, sa.manager_layer_list_name(manager), sa.manager_setting(manager)["num_layers"])
                self._layers[id(manager)] = sa.manager_layer_modules(manager)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        t0 = perf_counter_ns()
        for group in self._managers.values():
            for manager in group:
                self._install(manager)
        self._attach_ns = perf_counter_ns() - t0

    def _install(self, manager) -> None:
        layers = self._layers[id(manager)]
        for i, layer in enumerate(layers):
            # prepend: runs before sglang's own pre-hook (which waits for this layer's copy)
            self._handles.append(layer.register_forward_pre_hook(self._arrive_hook(manager, i), prepend=True))
            self._handles.append(layer.register_forward_pre_hook(self._after_wait_hook(manager, i)))
        if layers:
            self._handles.append(layers[-1].register_forward_hook(self._end_hook()))
        if sa.wrap_manager_prefetch(manager, self.around_prefetch):
            self._wrapped.append(manager)

    def detach(self) -> None:
        t0 = perf_counter_ns()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for manager in self._wrapped:
            sa.unwrap_manager_prefetch(manager)
        self._wrapped.clear()
        if self._last_pending is not None:
            self._last_pending.host_ns += perf_counter_ns() - t0
            self._last_pending = None

    # -- hot path: record events only ------------------------------------------------------

    def _event(self):
        return self._pool.pop() if self._pool else _new_event()

    def _arrive_hook(self, manager, i: int):
        key_m = id(manager)
        component, attr, n = self._names[key_m]

        def hook(module, args):
            current = self._current
            if current is None:
                return None
            t0 = perf_counter_ns()
            if i == 0:
                self._pass_index[key_m] = self._pass_index.get(key_m, -1) + 1
            layers = current.passes.setdefault((component, attr, n, self._pass_index.get(key_m, 0)), {})
            ev = layers[i] = _LayerEvents(arrive=self._event())
            t1 = perf_counter_ns()
            ev.arrive.record(self._stream)
            t2 = perf_counter_ns()
            self._issuer, self._layer = ev.arrive, ev
            current.record_ns += t2 - t1
            current.host_ns += perf_counter_ns() - t0
            return None

        return hook

    def _after_wait_hook(self, manager, i: int):
        """After sglang's pre-hook: its wait for this layer's copy and its prefetch calls are queued."""
        key = (id(manager), i)

        def hook(module, args):
            ev, current = self._layer, self._current
            if current is None or ev is None:
                return None
            t0 = perf_counter_ns()
            ev.start = self._event()
            t1 = perf_counter_ns()
            ev.start.record(self._stream)
            current.record_ns += perf_counter_ns() - t1
            ev.copy = self._copies.pop(key, None)
            current.host_ns += perf_counter_ns() - t0
            return None

        return hook

    def _end_hook(self):
        def hook(module, args, output):
            ev, current = self._layer, self._current
            if current is not None and ev is not None:
                t0 = perf_counter_ns()
                ev.end = self._event()
                ev.end.record(self._stream)
                current.host_ns += perf_counter_ns() - t0
            return None

        return hook

    def around_prefetch(self, original, manager, layer_idx, *args, **kwargs):
        """A manager's prefetch_layer while the monitor is attached (sglang_adapter.wrap_manager_prefetch)."""
        current = self._current
        if current is None:
            return original(manager, layer_idx, *args, **kwargs)
        t0 = perf_counter_ns()
        # installed only on this monitor's managers (attach), so no membership check
        stream = sa.manager_copy_stream(manager) if sa.manager_will_copy(manager, layer_idx) else None
        t1 = perf_counter_ns()
        current.host_ns += t1 - t0
        if stream is None:
            return original(manager, layer_idx, *args, **kwargs)
        result = original(manager, layer_idx, *args, **kwargs)
        t0 = perf_counter_ns()
        end = self._event()
        t1 = perf_counter_ns()
        end.record(stream)  # where sglang recorded the event its pre-hook waits for
        current.record_ns += perf_counter_ns() - t1
        key = (id(manager), layer_idx)
        if key not in self._layer_bytes:
            self._layer_bytes[key] = sa.manager_layer_bytes(manager, layer_idx)
        self._copies[key] = _Copy(end=end, nbytes=self._layer_bytes[key], issuer=self._issuer,
                                  previous=self._last_copy.get(id(stream)))
        self._last_copy[id(stream)] = end
        current.host_ns += perf_counter_ns() - t0
        return result

    # -- step boundaries ---------------------------------------------------------------------

    def begin_step(self, step: int, placement: Placement) -> None:
        import torch

        t0 = perf_counter_ns()
        torch.cuda.reset_peak_memory_stats()
        self._stream = _current_stream()
        start = self._event()
        start.record(self._stream)
        self._current = _PendingStep(step=step, placement=placement, start=start)
        self._pass_index.clear()
        self._copies.clear()
        self._last_copy.clear()
        self._issuer, self._layer, self._last_pending = None, None, None
        self._current.host_ns = self._attach_ns + perf_counter_ns() - t0
        self._attach_ns = 0

    def end_step(self) -> _PendingStep | None:
        t0 = perf_counter_ns()
        pending, self._current = self._current, None
        self._issuer, self._layer = None, None
        if pending is None:
            return None
        pending.end = self._event()
        pending.end.record(self._stream)
        pending.allocated, pending.peak = _allocated_now_and_peak()
        pending.host_ns += perf_counter_ns() - t0
        self._last_pending = pending
        return pending

    def resolve(self, pending: _PendingStep) -> StepTrace:
        """Read the events of a finished step (waits for its last event)."""
        pending.end.synchronize()
        if self._last_pending is pending:
            self._last_pending = None
        t0 = pending.start

        def ms(ev) -> float | None:
            return None if ev is None else float(t0.elapsed_time(ev))

        passes = []
        for (component, attr, n, _), layers in sorted(pending.passes.items(), key=lambda kv: kv[0][3]):
            timings = []
            for i in sorted(layers):
                ev = layers[i]
                after = layers.get(i + 1)
                end_event = ev.end if ev.end is not None else (after.arrive if after is not None else None)
                if end_event is None or ev.arrive is None:
                    continue
                arrive, end = ms(ev.arrive), ms(end_event)
                copy_start = copy_end = None
                if ev.copy is not None:
                    copy_end = ms(ev.copy.end)
                    bounds = [ms(e) for e in (ev.copy.issuer, ev.copy.previous) if e is not None]
                    copy_start = min(max(bounds, default=0.0), copy_end)
                start = min(max(arrive, ms(ev.start)) if ev.start is not None else arrive, end)
                timings.append(
                    LayerTiming(
                        layer=i,
                        compute_start_ms=start,
                        compute_end_ms=end,
                        stall_ms=start - arrive,
                        copy_start_ms=copy_start,
                        copy_end_ms=copy_end,
                        copy_bytes=ev.copy.nbytes if ev.copy is not None else 0,
                    )
                )
            passes.append(PassTrace(component=component, layer_list=attr, num_layers=n, layers=tuple(timings)))
        trace = StepTrace(
            step=pending.step,
            wall_ms=float(t0.elapsed_time(pending.end)),
            placement=pending.placement,
            passes=tuple(passes),
            dit_allocated_bytes=pending.allocated,
            peak_allocated_bytes=pending.peak,
            monitor_host_ms=pending.host_ns / 1e6,
            monitor_record_ms=pending.record_ns / 1e6,
        )
        self._recycle(pending)
        return trace

    def _recycle(self, pending: _PendingStep) -> None:
        self._pool.extend((pending.start, pending.end))
        for layers in pending.passes.values():
            for ev in layers.values():
                self._pool.extend(e for e in (ev.arrive, ev.start, ev.end) if e is not None)
                if ev.copy is not None:
                    self._pool.append(ev.copy.end)
