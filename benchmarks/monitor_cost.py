"""Host cost of the overlap monitor's parts, on the GPU, without sglang (seconds to run).

In a launch-bound denoising step every microsecond of host time on the hot path is step time, so
this splits what a traced step pays: the CUDA calls one by one, then the monitor itself on a
stack of small layers (each with one pre-hook standing in for sglang's, which the monitor wraps) -
a step without the monitor against a sampled step (attach, begin, forward, end, detach; events
read afterwards).

    python3 benchmarks/monitor_cost.py [--layers 30] [--passes 2] [--reps 200] > monitor_cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from sglang_autoperf.measure.monitor import OverlapMonitor, _record_function
from sglang_autoperf.trace import Placement


def per_call_us(fn, n: int = 20000) -> float:
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return 1e6 * elapsed / n


class Blocks(torch.nn.Module):
    def __init__(self, n: int, width: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(n))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def monitor_step_us(layers: int, passes: int, reps: int) -> dict:
    """Median host time of one step (`passes` forwards) without and with a sampled trace."""
    model = Blocks(layers, 64).cuda()
    manager = SimpleNamespace(model=model, layers_attr_str="blocks", prefetch_size=1, resident_layers=layers,
                              residency_policy="leading", num_layers=layers, enabled=False, device=None,
                              _forward_hooks=[])
    for block in model.blocks:  # sglang's own pre-hook, its handle kept where sglang keeps it, in both arms
        manager._forward_hooks.append(block.register_forward_pre_hook(lambda module, args: None))
    monitor = OverlapMonitor({"transformer": [manager]})
    x = torch.ones(1, 64, device="cuda")

    def step(traced: bool) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if traced:
            monitor.attach()
            monitor.begin_step(1, Placement(layers, 1, "leading"))
        with torch.no_grad():
            for _ in range(passes):
                model(x)
        if traced:
            pending = monitor.end_step()
            monitor.detach()
        elapsed = time.perf_counter() - t0
        if traced:
            monitor.resolve(pending)  # read after the timing, as at a request's end
        return 1e6 * elapsed

    for _ in range(20):
        step(False), step(True)
    plain, traced = [], []
    for _ in range(reps):  # alternate, so drift hits both alike
        plain.append(step(False))
        traced.append(step(True))
    plain_us, traced_us = statistics.median(plain), statistics.median(traced)
    return {
        "layers": layers, "passes": passes, "reps": reps,
        "step_plain_us": round(plain_us, 1), "step_traced_us": round(traced_us, 1),
        "monitor_us_per_step": round(traced_us - plain_us, 1),
        "monitor_us_per_layer_pass": round((traced_us - plain_us) / (layers * passes), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    torch.cuda.init()
    stream = torch.cuda.current_stream()
    event = torch.cuda.Event(enable_timing=True)
    record = _record_function()
    calls = {
        "torch.cuda.current_stream()": torch.cuda.current_stream,
        "Event.record()": event.record,
        "Event.record(stream)": lambda: event.record(stream),
        "_CudaEventBase.record(event, stream) (the monitor's)": lambda: record(event, stream),
        "torch.cuda.Event(enable_timing=True)": lambda: torch.cuda.Event(enable_timing=True),
        "torch.cuda.memory_allocated()": torch.cuda.memory_allocated,
        "torch.cuda.max_memory_allocated()": torch.cuda.max_memory_allocated,
        "torch.cuda.memory_stats_as_nested_dict()": torch.cuda.memory_stats_as_nested_dict,
        "torch.cuda.reset_peak_memory_stats()": torch.cuda.reset_peak_memory_stats,
    }
    print(json.dumps({
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "per_call_us": {name: round(per_call_us(fn, 2000 if "memory" in name else 20000), 2) for name, fn in calls.items()},
        "monitor": monitor_step_us(args.layers, args.passes, args.reps),
    }, indent=1))


if __name__ == "__main__":
    main()
