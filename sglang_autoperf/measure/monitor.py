"""Overlap monitor: CUDA events around every offloaded layer's compute and H2D copy.

Few events and little Python, because in a launch-bound step their host time is step time.
Measured on H200s in the GPU sandbox (Wan-1.3B 17f, paired against untraced neighbour steps):
4 events, a stream wait and 3 hooks per layer 3.9% of a traced step; 3 events and two hooks of
our own per layer 1.7-2.5% (2026-11-27); this layout 1.00-1.49% (2026-11-28, 3 calls), its own
clock (`monitor_host_ms`) 0.97-1.00%: ~30 us of host time per layer pass, half of it event
records. What changed: one function per layer in the place of sglang's own pre-hook (no hook of
ours for torch to dispatch), entries appended as flat tuples, a prefetch wrapper that costs two
dict reads when no copy is issued. Steps outside calibration or sampling carry none of it.
The layout:
- compute stream, per layer: `arrive` before sglang's pre-hook runs and `start` after it. Between the
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
attach/detach; perf_counter pairs around our part, sglang's hook excluded), so every trace says
what tracing it cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from sglang_autoperf.sglang_adapter import contract as sa
from sglang_autoperf.trace import LayerTiming, PassTrace, Placement, StepTrace


def _new_event():
    import torch

    return torch.cuda.Event(enable_timing=True)


def _record_function():
    """`record(event, stream)`: the C++ method under torch.cuda.Event.record, called without the
    Python wrapper (which only looks up the current stream when none is given): one frame less
    per record on the hot path. torch.cuda.Event.record where torch has no such base."""
    import torch

    base = getattr(torch._C, "_CudaEventBase", None)
    record = getattr(base, "record", None)
    return record if record is not None and issubclass(torch.cuda.Event, base) else torch.cuda.Event.record


def _current_stream():
    import torch

    return torch.cuda.current_stream()


def _memory_after_step() -> dict[str, int]:
    """One read of the allocator's stats (torch.cuda.memory_allocated() and the like each build the
    whole stats dict, inside the step being timed) and one cudaMemGetInfo (no stream sync)."""
    import torch

    stats = torch.cuda.memory_stats_as_nested_dict()
    allocated = stats.get("allocated_bytes", {}).get("all", {})
    reserved = stats.get("reserved_bytes", {}).get("all", {})
    free, total = torch.cuda.mem_get_info()
    return {"allocated": int(allocated.get("current", 0)), "peak": int(allocated.get("peak", 0)),
            "reserved": int(reserved.get("current", 0)), "peak_reserved": int(reserved.get("peak", 0)),
            "device_used": int(total - free), "device_total": int(total)}


@dataclass
class _Copy:
    end: Any
    nbytes: int
    issuer: Any = None  # arrive event of the layer whose pre-hook issued the copy
    previous: Any = None  # end event of the copy before it on the same stream, this step


@dataclass
class _PendingStep:
    step: int
    placement: Placement
    start: Any
    end: Any = None
    # one entry per traced layer, in forward order: (pass key, layer, arrive, start, copy or None);
    # pass key = (component, layer list, num layers, pass index). Flat tuples: cheapest to append.
    layers: list = field(default_factory=list)
    ends: dict = field(default_factory=dict)  # pass key -> end event of the list's last layer
    memory: dict = field(default_factory=dict)  # _memory_after_step()
    host_ns: int = 0  # the monitor's own host time in this step
    record_ns: int = 0  # of which inside Event.record (a full launch queue would block there)


def _no_pre_hook(module, args):
    return None


class OverlapMonitor:
    """One per worker. Its layer hooks exist only between `attach()` and `detach()` (calibrating or
    tracing), so served steps run no code of ours per layer; `begin_step`/`end_step` arm it for the
    steps to be traced."""

    def __init__(self, managers: dict[str, list]):
        self._managers = managers
        self._undo: list = []  # what attach() changed, undone by detach()
        self._current: _PendingStep | None = None
        self._pass_count: dict[int, int] = {}  # id(manager) -> forward passes seen this step
        self._copies: dict[tuple[int, int], _Copy] = {}  # (id(manager), layer) -> copy not yet consumed
        self._last_copy: dict[int, Any] = {}  # id(copy stream) -> end event of its latest copy this step
        self._issuer: Any = None  # arrive event of the layer whose pre-hook is running
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
        self._record = _record_function()
        for component, group in managers.items():
            for manager in group:
                self._names[id(manager)] = (component, sa.manager_layer_list_name(manager), sa.manager_setting(manager)["num_layers"])
                self._layers[id(manager)] = sa.manager_layer_modules(manager)

    @property
    def attached(self) -> bool:
        return bool(self._undo)

    def attach(self) -> None:
        if self._undo:
            return
        t0 = perf_counter_ns()
        for group in self._managers.values():
            for manager in group:
                self._install(manager)
        self._attach_ns = perf_counter_ns() - t0

    def _install(self, manager) -> None:
        layers = self._layers[id(manager)]
        pass_key: list = [None]  # this manager's current pass key, set by its layer 0
        # Our events go around sglang's own pre-hook, inside it (one function per layer, no hook
        # of ours for torch to dispatch): measured cheaper than two hooks of our own per layer.
        self._undo.append(sa.wrap_layer_pre_hooks(
            manager, layers, lambda i, sglang_hook: self._layer_hook(manager, i, sglang_hook or _no_pre_hook, pass_key)))
        if layers:
            self._undo.append(layers[-1].register_forward_hook(self._end_hook(pass_key)).remove)
        if sa.wrap_manager_prefetch(manager, self._prefetch_wrapper(manager)):
            self._undo.append(lambda: sa.unwrap_manager_prefetch(manager))

    def detach(self) -> None:
        t0 = perf_counter_ns()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self._last_pending is not None:
            self._last_pending.host_ns += perf_counter_ns() - t0
            self._last_pending = None

    # -- hot path: record events only ------------------------------------------------------

    def _layer_hook(self, manager, i: int, sglang_hook, pass_key: list):
        """sglang's pre-hook of layer i with our two events around it: `arrive` before (the compute
        stream reached the layer), `start` after (its wait for the layer's copy and its prefetch
        calls are queued)."""
        key_m = id(manager)
        component, attr, n = self._names[key_m]
        copy_key = (key_m, i)
        copies, pool, record = self._copies, self._pool, self._record

        def hook(module, args):
            current = self._current
            if current is None:
                return sglang_hook(module, args)
            t0 = perf_counter_ns()
            if i == 0:
                count = self._pass_count[key_m] = self._pass_count.get(key_m, -1) + 1
                pass_key[0] = (component, attr, n, count)
            arrive = pool.pop() if pool else _new_event()
            t1 = perf_counter_ns()
            record(arrive, self._stream)
            t2 = perf_counter_ns()
            self._issuer = arrive
            result = sglang_hook(module, args)
            t3 = perf_counter_ns()
            start = pool.pop() if pool else _new_event()
            t4 = perf_counter_ns()
            record(start, self._stream)
            t5 = perf_counter_ns()
            current.layers.append((pass_key[0] or (component, attr, n, 0), i, arrive, start, copies.pop(copy_key, None)))
            current.record_ns += (t2 - t1) + (t5 - t4)
            current.host_ns += (t2 - t0) + (perf_counter_ns() - t3)
            return result

        return hook

    def _end_hook(self, pass_key: list):
        def hook(module, args, output):
            current = self._current
            if current is not None and pass_key[0] is not None:
                t0 = perf_counter_ns()
                end = self._pool.pop() if self._pool else _new_event()
                self._record(end, self._stream)
                current.ends[pass_key[0]] = end
                current.host_ns += perf_counter_ns() - t0
            return None

        return hook

    def _prefetch_wrapper(self, manager):
        """A manager's prefetch_layer while the monitor is attached (sglang_contract.wrap_manager_prefetch):
        a copy was issued when sglang recorded a new event for the layer; ours goes right after it,
        on the copy stream. Most calls (a pre-hook asks again for layers already there) cost two
        dict reads."""
        key_m = id(manager)
        events = sa.manager_prefetch_events(manager)
        stream = sa.manager_copy_stream(manager)
        record = self._record

        def make(original):
            def prefetch_layer(layer_idx, *args, **kwargs):
                current = self._current
                if current is None:
                    return original(manager, layer_idx, *args, **kwargs)
                before = events.get(layer_idx)
                result = original(manager, layer_idx, *args, **kwargs)
                t0 = perf_counter_ns()
                issued = events.get(layer_idx)
                if issued is not None and issued is not before:
                    end = self._pool.pop() if self._pool else _new_event()
                    t1 = perf_counter_ns()
                    record(end, stream)
                    current.record_ns += perf_counter_ns() - t1
                    key = (key_m, layer_idx)
                    nbytes = self._layer_bytes.get(key)
                    if nbytes is None:
                        nbytes = self._layer_bytes[key] = sa.manager_layer_bytes(manager, layer_idx)
                    self._copies[key] = _Copy(end=end, nbytes=nbytes, issuer=self._issuer,
                                              previous=self._last_copy.get(id(stream)))
                    self._last_copy[id(stream)] = end
                current.host_ns += perf_counter_ns() - t0
                return result

            return prefetch_layer

        return make

    # -- step boundaries ---------------------------------------------------------------------

    def begin_step(self, step: int, placement: Placement) -> None:
        import torch

        t0 = perf_counter_ns()
        torch.cuda.reset_peak_memory_stats()
        self._stream = _current_stream()
        start = self._event()
        start.record(self._stream)
        self._current = _PendingStep(step=step, placement=placement, start=start)
        self._pass_count.clear()
        self._copies.clear()
        self._last_copy.clear()
        self._issuer, self._last_pending = None, None
        self._current.host_ns = self._attach_ns + perf_counter_ns() - t0
        self._attach_ns = 0

    def end_step(self) -> _PendingStep | None:
        t0 = perf_counter_ns()
        pending, self._current = self._current, None
        self._issuer = None
        if pending is None:
            return None
        pending.end = self._event()
        pending.end.record(self._stream)
        pending.memory = _memory_after_step()
        pending.host_ns += perf_counter_ns() - t0
        self._last_pending = pending
        return pending

    def _event(self):
        return self._pool.pop() if self._pool else _new_event()

    def resolve(self, pending: _PendingStep) -> StepTrace:
        """Read the events of a finished step (waits for its last event)."""
        pending.end.synchronize()
        if self._last_pending is pending:
            self._last_pending = None
        t0 = pending.start

        def ms(ev) -> float | None:
            return None if ev is None else float(t0.elapsed_time(ev))

        by_pass: dict[tuple, dict[int, tuple]] = {}
        for entry in pending.layers:
            by_pass.setdefault(entry[0], {})[entry[1]] = entry
        passes = []
        for key in sorted(by_pass, key=lambda k: k[3]):
            component, attr, n, _ = key
            layers = by_pass[key]
            timings = []
            for i in sorted(layers):
                _, _, arrive_ev, start_ev, copy = layers[i]
                after = layers.get(i + 1)
                end_ev = after[2] if after is not None else pending.ends.get(key)
                if end_ev is None:
                    continue
                arrive, end = ms(arrive_ev), ms(end_ev)
                copy_start = copy_end = None
                if copy is not None:
                    copy_end = ms(copy.end)
                    bounds = [ms(e) for e in (copy.issuer, copy.previous) if e is not None]
                    copy_start = min(max(bounds, default=0.0), copy_end)
                start = min(max(arrive, ms(start_ev)), end)
                timings.append(
                    LayerTiming(
                        layer=i,
                        compute_start_ms=start,
                        compute_end_ms=end,
                        stall_ms=start - arrive,
                        copy_start_ms=copy_start,
                        copy_end_ms=copy_end,
                        copy_bytes=copy.nbytes if copy is not None else 0,
                    )
                )
            passes.append(PassTrace(component=component, layer_list=attr, num_layers=n, layers=tuple(timings)))
        trace = StepTrace(
            step=pending.step,
            wall_ms=float(t0.elapsed_time(pending.end)),
            placement=pending.placement,
            passes=tuple(passes),
            dit_allocated_bytes=pending.memory.get("allocated", 0),
            peak_allocated_bytes=pending.memory.get("peak", 0),
            peak_reserved_bytes=pending.memory.get("peak_reserved", 0),
            reserved_bytes=pending.memory.get("reserved", 0),
            device_used_bytes=pending.memory.get("device_used", 0),
            device_total_bytes=pending.memory.get("device_total", 0),
            monitor_host_ms=pending.host_ns / 1e6,
            monitor_record_ms=pending.record_ns / 1e6,
        )
        self._recycle(pending)
        return trace

    def _recycle(self, pending: _PendingStep) -> None:
        self._pool.extend((pending.start, pending.end))
        self._pool.extend(pending.ends.values())
        for _, _, arrive, start, copy in pending.layers:
            self._pool.append(arrive)
            self._pool.append(start)
            if copy is not None:
                self._pool.append(copy.end)
