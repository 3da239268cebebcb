"""Overlap monitor: CUDA events around every offloaded layer's H2D copy and compute.

Per layer, on the compute stream: `arrive` (before sglang's pre-hook waits for the weights),
`start` (after it), `end` (after the layer ran); on the copy stream: copy start and end. The
stall sglang's wait caused is `start - arrive`: exactly the time the compute stream sat idle on
copies. A layer's `end` is the next layer's `arrive` (nothing runs on the GPU between the two:
one hook and one event per layer fewer); only a list's last layer has an end hook of its own.
Events are only recorded on the hot path; they are read (which waits for them) after the step:
between steps while calibrating, at the request's end when sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sglang_autoperf import sglang_adapter as sa
from sglang_autoperf.measure.trace import LayerTiming, PassTrace, Placement, StepTrace


def _new_event():
    import torch

    return torch.cuda.Event(enable_timing=True)


@dataclass
class _LayerEvents:
    arrive: Any = None
    start: Any = None
    end: Any = None
    copy_start: Any = None
    copy_end: Any = None
    copy_bytes: int = 0


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


class OverlapMonitor:
    """One per worker. Its layer hooks exist only between `attach()` and `detach()` (calibrating or
    tracing), so served steps run no code of ours per layer; `begin_step`/`end_step` arm it for the
    steps to be traced."""

    def __init__(self, managers: dict[str, list]):
        self._managers = managers
        self._handles: list = []
        self._current: _PendingStep | None = None
        self._pass_index: dict[int, int] = {}  # id(manager) -> forward passes seen this step
        self._copies: dict[tuple[int, int], _LayerEvents] = {}  # (id(manager), layer) -> copy events
        self._layer_bytes: dict[tuple[int, int], int] = {}
        self._names: dict[int, tuple[str, str, int]] = {}
        # Creating a CUDA event costs host time, and in a launch-bound step host time is step
        # time: events are created once and reused after each step has been read.
        self._pool: list = []
        for component, group in managers.items():
            for manager in group:
                self._names[id(manager)] = (component, sa.manager_layer_list_name(manager), sa.manager_setting(manager)["num_layers"])

    @property
    def active(self) -> bool:
        return self._current is not None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        for group in self._managers.values():
            for manager in group:
                self._install(manager)

    def _install(self, manager) -> None:
        layers = sa.manager_layer_modules(manager)
        for i, layer in enumerate(layers):
            # prepend: runs before sglang's own pre-hook (which waits for this layer's copy)
            self._handles.append(layer.register_forward_pre_hook(self._arrive_hook(manager, i), prepend=True))
            self._handles.append(layer.register_forward_pre_hook(self._start_hook(manager, i)))
        if layers:
            self._handles.append(layers[-1].register_forward_hook(self._end_hook(manager, len(layers) - 1)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- hot path: record events only ------------------------------------------------------

    def _event(self):
        return self._pool.pop() if self._pool else _new_event()

    def _layer_events(self, manager, i: int) -> _LayerEvents:
        key_m = id(manager)
        if i == 0:
            self._pass_index[key_m] = self._pass_index.get(key_m, -1) + 1
        component, attr, n = self._names[key_m]
        pass_key = (component, attr, n, self._pass_index.get(key_m, 0))
        layers = self._current.passes.setdefault(pass_key, {})
        return layers.setdefault(i, _LayerEvents())

    def _arrive_hook(self, manager, i: int):
        def hook(module, args):
            if self._current is None:
                return None
            ev = self._layer_events(manager, i)
            ev.arrive = self._event()
            ev.arrive.record()
            return None

        return hook

    def _start_hook(self, manager, i: int):
        def hook(module, args):
            if self._current is None:
                return None
            component, attr, n = self._names[id(manager)]
            pass_key = (component, attr, n, self._pass_index.get(id(manager), 0))
            ev = self._current.passes.get(pass_key, {}).get(i)
            if ev is None:
                return None
            ev.start = self._event()
            ev.start.record()
            copy = self._copies.pop((id(manager), i), None)
            if copy is not None:
                ev.copy_start, ev.copy_end, ev.copy_bytes = copy.copy_start, copy.copy_end, copy.copy_bytes
            return None

        return hook

    def _end_hook(self, manager, i: int):
        def hook(module, args, output):
            if self._current is None:
                return None
            component, attr, n = self._names[id(manager)]
            pass_key = (component, attr, n, self._pass_index.get(id(manager), 0))
            ev = self._current.passes.get(pass_key, {}).get(i)
            if ev is not None and ev.start is not None:
                ev.end = self._event()
                ev.end.record()
            return None

        return hook

    def around_prefetch(self, original, manager, layer_idx, *args, **kwargs):
        """Wraps LayerwiseOffloadManager.prefetch_layer while a step is traced."""
        if self._current is None or id(manager) not in self._names or not sa.manager_will_copy(manager, layer_idx):
            return original(manager, layer_idx, *args, **kwargs)
        import torch

        stream = sa.manager_copy_stream(manager)
        if stream is None:
            return original(manager, layer_idx, *args, **kwargs)
        # sglang's prefetch first makes the copy stream wait for the compute queued so far;
        # doing that wait here first puts the start event where the copy really starts.
        stream.wait_stream(torch.cuda.current_stream())
        events = _LayerEvents(copy_start=self._event(), copy_end=self._event())
        events.copy_start.record(stream)
        result = original(manager, layer_idx, *args, **kwargs)
        events.copy_end.record(stream)
        key = (id(manager), layer_idx)
        if key not in self._layer_bytes:
            self._layer_bytes[key] = sa.manager_layer_bytes(manager, layer_idx)
        events.copy_bytes = self._layer_bytes[key]
        self._copies[key] = events
        return result

    # -- step boundaries ---------------------------------------------------------------------

    def begin_step(self, step: int, placement: Placement) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()
        start = self._event()
        start.record()
        self._current = _PendingStep(step=step, placement=placement, start=start)
        self._pass_index.clear()
        self._copies.clear()

    def end_step(self) -> _PendingStep | None:
        import torch

        pending, self._current = self._current, None
        if pending is None:
            return None
        pending.end = self._event()
        pending.end.record()
        pending.allocated = int(torch.cuda.memory_allocated())
        pending.peak = int(torch.cuda.max_memory_allocated())
        return pending

    def resolve(self, pending: _PendingStep) -> StepTrace:
        """Read the events of a finished step (waits for its last event)."""
        pending.end.synchronize()
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
                if ev.start is None or end_event is None or ev.arrive is None:
                    continue
                arrive, start, end = ms(ev.arrive), ms(ev.start), ms(end_event)
                timings.append(
                    LayerTiming(
                        layer=i,
                        compute_start_ms=start,
                        compute_end_ms=end,
                        stall_ms=max(0.0, start - arrive),
                        copy_start_ms=ms(ev.copy_start),
                        copy_end_ms=ms(ev.copy_end),
                        copy_bytes=ev.copy_bytes if ev.copy_start is not None else 0,
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
        )
        self._recycle(pending)
        return trace

    def _recycle(self, pending: _PendingStep) -> None:
        self._pool.extend((pending.start, pending.end))
        for layers in pending.passes.values():
            for ev in layers.values():
                self._pool.extend(e for e in (ev.arrive, ev.start, ev.end, ev.copy_start, ev.copy_end) if e is not None)
