"""Benchmarks-only sglang plugin: the worker side of benchmarks/inprocess_sweep.py. Never installed;
the sweep's sglang process finds it through PYTHONPATH by the dist-info beside this folder (as
tests/support does for the tests), and it does nothing unless AUTOPERF_SWEEP_SCHEDULE is set.

In the GPU worker, with the model loaded once, it walks a schedule of per-list placements between
denoising steps: for each block it applies the placement to every LayerwiseOffloadManager
(sglang_contract.set_manager_placement, one manager per layer list), runs warm steps (the new
resident set is pinned by the first forward), times the next steps with CUDA events, optionally
traces a few more with the project's OverlapMonitor, and appends one JSON line with the step
times and the memory it peaked at. A fixed reference placement is measured every few blocks so
that drift of the card's speed cancels (`normalized_ms`). When the planned points are done, one
round of neighbours around the best point of each budget follows.
"""
from __future__ import annotations

import json
import os
import statistics
import time

SCHEDULE_ENV = "AUTOPERF_SWEEP_SCHEDULE"  # the schedule JSON (benchmarks/inprocess_sweep.py writes it)
OUT_ENV = "AUTOPERF_SWEEP_OUT"  # folder: points.jsonl, bandwidth.json, traces/, done

_sweep = None


def register():
    if not os.environ.get(SCHEDULE_ENV):
        return
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry, HookType

    from sglang_autoperf.sglang_adapter.contract import TARGET_DENOISE_LOOP, TARGET_DENOISE_STEP, TARGET_WORKER_INIT

    HookRegistry.register(TARGET_WORKER_INIT, _after_worker_init, HookType.AFTER)
    HookRegistry.register(TARGET_DENOISE_LOOP, _around_loop, HookType.AROUND)
    HookRegistry.register(TARGET_DENOISE_STEP, _around_step, HookType.AROUND)


def _say(out_dir: str, text: str) -> None:
    with open(os.path.join(out_dir, "worker.log"), "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} {text}\n")


def _after_worker_init(result, worker, *args, **kwargs):
    global _sweep
    out_dir = os.environ.get(OUT_ENV, "/tmp/sweep")
    os.makedirs(out_dir, exist_ok=True)
    try:
        from sglang_autoperf.sglang_adapter import contract as sa

        managers = sa.offload_managers(sa.worker_pipeline(worker))
        if not managers:
            _say(out_dir, "no layerwise-offloaded DiT: nothing to sweep")
            return None
        with open(os.environ[SCHEDULE_ENV]) as f:
            schedule = json.load(f)
        _sweep = Sweep(managers, schedule, out_dir)
        _say(out_dir, f"ready: lists {[ll.key for ll in _sweep.lists]}, {len(_sweep.queue)} blocks queued")
    except Exception as exc:  # a benchmark harness failure is a result line, not a crashed worker
        _say(out_dir, f"attach failed: {type(exc).__name__}: {exc}")
    return None


def _around_loop(original, *args, **kwargs):
    sweep = _sweep
    if sweep is not None:
        sweep.request_begins()
    try:
        return original(*args, **kwargs)
    finally:
        if sweep is not None:
            sweep.request_ends()


def _around_step(original, *args, **kwargs):
    sweep = _sweep
    if sweep is None or sweep.done:
        return original(*args, **kwargs)
    return sweep.step(original, args, kwargs)


def h2d_bytes_per_s(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Pinned host-to-device copy rate, median of `repeats` copies of `nbytes` (nothing else running)."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    rates = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dev.copy_(host, non_blocking=True)
        end.record()
        end.synchronize()
        rates.append(nbytes / (start.elapsed_time(end) / 1e3))
    del host, dev
    torch.cuda.empty_cache()
    return statistics.median(rates)


def _placement(d: dict):
    from sglang_autoperf.retune.lists import ListPlacement

    return ListPlacement.from_dict(d)


class Sweep:
    def __init__(self, managers: dict, schedule: dict, out_dir: str):
        import torch

        from sglang_autoperf.sglang_adapter import contract as sa
        from sglang_autoperf.measure.monitor import OverlapMonitor
        from sglang_autoperf.retune.lists import LayerList, list_key

        self.sa = sa
        self.out_dir = out_dir
        self.schedule = schedule
        self.by_key = {list_key(c, sa.manager_layer_list_name(m)): m for c, group in managers.items() for m in group}
        self.lists = [LayerList(k, tuple(sa.manager_layer_bytes(m, i) for i in range(sa.manager_setting(m)["num_layers"])))
                      for k, m in self.by_key.items()]
        self.monitor = OverlapMonitor(managers)
        self.warm_steps = int(schedule.get("warm_steps", 1))
        self.measured_steps = int(schedule.get("measured_steps", 3))
        self.traced_steps = int(schedule.get("traced_steps", 3))
        self.deadline = float(schedule.get("deadline_unix", time.time() + 300))
        self.reference = {"label": "reference", "kind": "reference", "lists": schedule["reference"], "trace": False}
        self.queue = self._interleaved(schedule["points"])
        self.neighbour_round_done = not (schedule.get("budgets") and schedule.get("neighbour_round", True))
        self.records: list[dict] = []
        self.block = None
        self.done = False
        self.first_of_request = True
        self.request_index = -1
        self.t0 = time.time()
        self.streaming = self._compressed_streaming(managers) if schedule.get("compress") else None
        with open(os.path.join(out_dir, "bandwidth.json"), "w") as f:
            json.dump({"h2d_bytes_per_s": h2d_bytes_per_s(), "card": torch.cuda.get_device_name(),
                       "total_bytes": torch.cuda.mem_get_info()[1],
                       "lists": {ll.key: list(ll.block_bytes) for ll in self.lists}}, f)

    def _compressed_streaming(self, managers: dict):
        """Every list's layers also held in the codec's bytes (issue 18): a block with "compressed"
        streams those. Records the store, host bytes and a bit-for-bit check of every decoded layer."""
        import torch

        from sglang_autoperf.measure.compressed import CompressedStreaming

        raw_host = self.streaming_host_bytes(managers)
        t0 = time.time()
        streaming = CompressedStreaming.build(managers)
        info = {"raw_host_bytes": raw_host, "build_s": time.time() - t0, "built": streaming is not None}
        if streaming is not None:
            mismatched = {self.sa.manager_layer_list_name(s.manager): s.mismatched_layers() for s in streaming.stores}
            info.update(report=streaming.report(), both_stores_host_bytes=streaming.host_bytes(),
                        compressed_host_bytes=sum(lay.nbytes for s in streaming.stores for _, lay in s.packed.values()),
                        layers_checked=sum(len(s.packed) for s in streaming.stores), mismatched_layers=mismatched,
                        weights_bit_identical=not any(mismatched.values()))
            torch.cuda.empty_cache()
        with open(os.path.join(self.out_dir, "compression.json"), "w") as f:
            json.dump(info, f, indent=1)
        _say(self.out_dir, f"compressed streaming: {json.dumps({k: v for k, v in info.items() if k != 'mismatched_layers'})}")
        return streaming

    def streaming_host_bytes(self, managers: dict) -> int:
        import torch

        return sum(b.numel() * b.element_size() for group in managers.values() for m in group
                   for b in self.sa.manager_flat_host_buffers(m, torch.bfloat16).values())

    def _interleaved(self, points: list[dict]) -> list[dict]:
        every = max(1, int(self.schedule.get("reference_every", 3)))
        out = []
        for i, p in enumerate(points):
            if i % every == 0:
                out.append(dict(self.reference))
            out.append(p)
        return out + [dict(self.reference)]

    # -- requests --------------------------------------------------------------------------

    def request_begins(self) -> None:
        import torch

        self.request_index += 1
        self.first_of_request = True
        switch = os.path.join(self.out_dir, "compressed_switch")
        if self.done and self.streaming is not None and os.path.exists(switch):
            with open(switch) as f:
                self.streaming.set_active(f.read().strip() == "1")
            _say(self.out_dir, f"request {self.request_index}: compressed streaming {self.streaming.active}")
        if self.block is not None:  # what ran between two denoising loops (decode, encode)
            self.block["between_peak_bytes"] = max(self.block.get("between_peak_bytes", 0),
                                                   int(torch.cuda.max_memory_reserved()))
            torch.cuda.reset_peak_memory_stats()

    def request_ends(self) -> None:
        import torch

        if self.block is not None:
            self._fold_peaks()
            torch.cuda.reset_peak_memory_stats()

    def _fold_peaks(self) -> None:
        """Keep the block's peaks before something resets the counters (a request's end, a trace)."""
        import torch

        for name, now in (("reserved_peak_bytes", torch.cuda.max_memory_reserved()),
                          ("allocated_peak_bytes", torch.cuda.max_memory_allocated())):
            self.block[name] = max(self.block.get(name, 0), int(now))

    # -- steps -----------------------------------------------------------------------------

    def step(self, original, args, kwargs):
        import torch

        if self.block is None and not self._start_next_block():
            return original(*args, **kwargs)
        b = self.block
        warm = self.first_of_request or b["warm_left"] > 0
        tracing = not warm and len(b["times_ms"]) >= self.measured_steps and b["trace"]
        if tracing:
            from sglang_autoperf.trace import Placement

            self._fold_peaks()  # the monitor resets the peak counters at each traced step
            first = next(iter(b["lists"].values()))
            self.monitor.attach()
            self.monitor.begin_step(len(b["traces"]), Placement(first["resident_layers"], first["prefetch_layers"],
                                                                first["policy"]))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            result = original(*args, **kwargs)
        except Exception as exc:
            b["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.monitor.detach()
            self._finish_block()
            raise
        end.record()
        end.synchronize()
        ms = float(start.elapsed_time(end))
        if tracing:
            b["traces"].append(self.monitor.resolve(self.monitor.end_step()))
            self.monitor.detach()
        elif warm:
            b["warm_ms"].append(ms)
            b["warm_left"] = max(0, b["warm_left"] - 1)
        else:
            b["times_ms"].append(ms)
        self.first_of_request = False
        if len(b["times_ms"]) >= self.measured_steps and (not b["trace"] or len(b["traces"]) >= self.traced_steps):
            self._finish_block()
        return result

    def _start_next_block(self) -> bool:
        import torch

        if not self.queue and not self.neighbour_round_done:
            self.neighbour_round_done = True
            self.queue = self._interleaved(neighbour_points(self.records, self.lists, self.schedule["budgets"],
                                                            int(self.schedule.get("max_neighbours", 12))))
            _say(self.out_dir, f"neighbour round: {len(self.queue)} blocks")
        if not self.queue or time.time() > self.deadline:
            self.done = True
            # the rest of the request in flight runs at the fastest placement, not the last one measured
            if self.streaming is not None:
                self.streaming.set_active(bool(self.schedule.get("park_compressed")))
            for key, p in _placement(self.schedule.get("park") or self.schedule["reference"]).lists:
                self.sa.set_manager_placement(self.by_key[key], prefetch_layers=p.prefetch_layers,
                                              resident_layers=p.resident_layers, policy=p.policy)
            open(os.path.join(self.out_dir, "done"), "w").close()
            _say(self.out_dir, f"done: {len(self.records)} blocks, {len(self.queue)} left unmeasured")
            return False
        spec = self.queue.pop(0)
        if self.streaming is not None:
            self.streaming.set_active(bool(spec.get("compressed")))
        placement = _placement(spec["lists"])
        for key, p in placement.lists:
            self.sa.set_manager_placement(self.by_key[key], prefetch_layers=p.prefetch_layers,
                                          resident_layers=p.resident_layers, policy=p.policy)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.block = dict(spec, lists=placement.to_dict(), warm_left=self.warm_steps, times_ms=[], warm_ms=[],
                          traces=[], started_s=time.time() - self.t0, request=self.request_index)
        return True

    def _finish_block(self) -> None:
        import torch

        from sglang_autoperf.retune.lists import buffer_bytes, resident_bytes, streamed_bytes

        b, self.block = self.block, None
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        reserved_now = int(torch.cuda.memory_reserved())
        placement = _placement(b["lists"])
        traces = b.pop("traces")
        record = {k: v for k, v in b.items() if k not in ("warm_left",)}
        record.update(
            reserved_peak_bytes=max(b.get("reserved_peak_bytes", 0), int(torch.cuda.max_memory_reserved())),
            allocated_peak_bytes=max(b.get("allocated_peak_bytes", 0), int(torch.cuda.max_memory_allocated())),
            non_allocator_bytes=int(total - free - reserved_now),
            median_ms=statistics.median(b["times_ms"]) if b["times_ms"] else None,
            resident_bytes=resident_bytes(self.lists, placement), buffer_bytes=buffer_bytes(self.lists, placement),
            streamed_bytes=streamed_bytes(self.lists, placement), index=len(self.records),
        )
        record["peak_bytes"] = record["reserved_peak_bytes"] + record["non_allocator_bytes"]
        self.records.append(record)
        with open(os.path.join(self.out_dir, "points.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if traces:
            self._write_traces(record, traces)

    def _write_traces(self, record: dict, traces: list) -> None:
        import torch
        from importlib import metadata

        from sglang_autoperf.retune.retuner import layer_lists
        from sglang_autoperf.retune.lists import list_key
        from sglang_autoperf.trace import TraceRecording

        by_key = {ll.key: ll for ll in self.lists}
        order = [list_key(c, name) for c, name, _ in layer_lists(traces)]
        rec = TraceRecording(
            source=(f"recorded by sglang-autoperf's overlap monitor inside benchmarks/inprocess_sweep.py on "
                    f"{torch.cuda.get_device_name()}, {time.strftime('%Y-%m-%d')}, sglang {metadata.version('sglang')}, "
                    f"torch {torch.__version__}; placement per layer list in meta.list_placement"),
            layer_bytes=[b for k in order for b in by_key[k].block_bytes],
            steps=traces,
            meta={"point": record["label"], "list_placement": record["lists"],
                  "memory": {k: record[k] for k in ("reserved_peak_bytes", "allocated_peak_bytes",
                                                    "non_allocator_bytes", "peak_bytes", "resident_bytes",
                                                    "buffer_bytes")},
                  "untraced_median_ms": record["median_ms"], **self.schedule.get("trace_meta", {})},
        )
        os.makedirs(os.path.join(self.out_dir, "traces"), exist_ok=True)
        name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in record["label"])
        with open(os.path.join(self.out_dir, "traces", f"trace-{record['index']:03d}-{name}.json"), "w") as f:
            json.dump(rec.to_dict(), f)


# --- shared with benchmarks/inprocess_sweep.py (one definition) ----------------------------------

def normalized_ms(records: list[dict]) -> dict[int, float]:
    """index -> the point's median step scaled by (overall reference median / the mean of the
    reference blocks measured just before and after it): drift of the card cancels."""
    refs = [(r["index"], r["median_ms"]) for r in records if r.get("kind") == "reference" and r.get("median_ms")]
    if not refs:
        return {r["index"]: r["median_ms"] for r in records if r.get("median_ms")}
    overall = statistics.median(ms for _, ms in refs)
    out = {}
    for r in records:
        if not r.get("median_ms"):
            continue
        before = [ms for i, ms in refs if i <= r["index"]][-1:]
        after = [ms for i, ms in refs if i >= r["index"]][:1]
        local = statistics.mean(before + after) if before + after else overall
        out[r["index"]] = r["median_ms"] * overall / local
    return out


def neighbour_points(records: list[dict], lists: list, budgets: dict[str, int], max_per_budget: int) -> list[dict]:
    """Around the fastest point whose measured peak fits each budget: each list's resident count
    +-1/+-2 and prefetch 1..6, the other policy on every list; only those whose peak, estimated as
    the best's measured peak plus the change in placed bytes, still fits, and not yet measured."""
    from sglang_autoperf.retune.lists import placed_bytes
    from sglang_autoperf.trace import Placement

    norm = normalized_ms(records)
    seen = {json.dumps(r["lists"], sort_keys=True) for r in records}
    out: list[dict] = []
    for name, limit in budgets.items():
        fits = [r for r in records if r["index"] in norm and r["peak_bytes"] <= limit and r.get("kind") != "reference"]
        if not fits:
            continue
        best = min(fits, key=lambda r: norm[r["index"]])
        base = _placement(best["lists"])
        variants = []
        for key, p in base.lists:
            n = next(ll.count for ll in lists if ll.key == key)
            variants += [base.with_list(key, Placement(r, p.prefetch_layers, p.policy))
                         for r in (p.resident_layers + d for d in (1, -1, 2, -2)) if 0 <= r <= n]
            variants += [base.with_list(key, Placement(p.resident_layers, f, p.policy))
                         for f in (1, 2, 3, 4, 6) if f != p.prefetch_layers and p.resident_layers < n]
        other = "leading" if base.lists[0][1].policy == "strided" else "strided"
        from sglang_autoperf.retune.lists import ListPlacement

        variants.append(ListPlacement(tuple((k, Placement(p.resident_layers, p.prefetch_layers, other))
                                            for k, p in base.lists)))
        room = limit - best["peak_bytes"] + placed_bytes(lists, base)
        kept = 0
        for v in variants:
            text = json.dumps(v.to_dict(), sort_keys=True)
            if text in seen or placed_bytes(lists, v) > room or kept >= max_per_budget:
                continue
            seen.add(text)
            kept += 1
            out.append({"label": f"near-best-{name}: {v.label()}", "kind": "neighbour", "lists": v.to_dict(),
                        "trace": False})
    return out
