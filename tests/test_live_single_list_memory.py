"""A DiT with one layer list sizes its candidates by the same measured-memory rule as the per-list
path (retune/memory): room above the peak its traced start steps measured, card-wide, less the
measured error margin. Driven by the Z-Image-Turbo warmup the plugin traced on an H200 beside a
ballast that left 10 GiB free (tests/fixtures/traces/h200-zimage-turbo-1024-10g-warmup-2026-11-29.json:
its first two traced steps are the start placement, 2 of 30 layers resident, prefetch 2)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from sglang_autoperf.cache import TuningCache
from sglang_autoperf.measure.live import Calibration, WorkerTuner
from sglang_autoperf.retune.memory import PEAK_ERROR_MARGIN_BYTES
from sglang_autoperf.settings import Settings
from sglang_autoperf.trace import TraceRecording

GiB = 1 << 30
RECORDING = Path(__file__).parent / "fixtures" / "traces" / "h200-zimage-turbo-1024-10g-warmup-2026-11-29.json"
IDENTITY = {"rank": 0, "performance_mode": "auto", "pinned": [], "num_gpus": 1, "layout": "tp1", "lora": (),
            "sglang_version": "0.5.23", "torch_version": "2.11.0"}
FREE_AT_START = int(9.5 * GiB)  # what the plan saw free in that run ("over the 9.5 GiB budget", its log)


def _recording() -> TraceRecording:
    return TraceRecording.from_dict(json.loads(RECORDING.read_text()))


def _start_steps(rec: TraceRecording) -> list:
    start = rec.steps[0].placement
    return [s for s in rec.steps[:2] if s.placement == start]


def _tuner(tmp_path, budget_bytes=None) -> WorkerTuner:
    rec = _recording()
    p = rec.steps[0].placement
    manager = SimpleNamespace(layers_attr_str="layers", num_layers=30, resident_layers=p.resident_layers,
                              prefetch_size=p.prefetch_layers, residency_policy=p.policy, residency_lifetime="forward")
    plan = SimpleNamespace(model_fingerprint="fp", gpu_key={"name": "NVIDIA H200"}, budget_bytes=budget_bytes,
                           free_bytes_at_start=FREE_AT_START, plan={"predicted": {"vram_bytes": 9 * GiB}})
    tuner = WorkerTuner(plan, Settings(enabled=True, cache_dir=str(tmp_path)), {"transformer": [manager]}, IDENTITY,
                        monitor=SimpleNamespace(), cache=TuningCache(str(tmp_path)), policies=("leading", "strided"),
                        device_total=lambda: rec.steps[0].device_total_bytes)
    tuner.layer_bytes = lambda steps=None: list(rec.layer_bytes)
    return tuner


def _candidates(tuner) -> list:
    steps = _start_steps(_recording())
    cal = Calibration(bucket="1024x1024x1f_b1_cfg0", batch_size=1, step_mode=True, baseline=steps[0].placement,
                      objective="speed", max_candidates=3, started=0.0)
    cal.traces[cal.baseline] = steps
    return tuner._propose(cal)


def _room(limit_bytes: int) -> int:
    """Computed here from the recorded start steps: card-wide peak = reserved peak + what lay outside
    the allocator (other processes included)."""
    steps = _start_steps(_recording())
    peak = max(s.peak_reserved_bytes for s in steps) + steps[-1].device_used_bytes - steps[-1].reserved_bytes
    return limit_bytes - PEAK_ERROR_MARGIN_BYTES - peak


def test_candidates_fill_the_measured_room_and_no_more(tmp_path):
    rec = _recording()
    layer = rec.layer_bytes[0]
    room = _room(rec.steps[0].device_total_bytes)  # no budget: the card is the limit
    candidates = _candidates(_tuner(tmp_path))
    assert candidates
    start = rec.steps[0].placement.resident_layers
    extra = [(c.resident_layers - start) * layer for c in candidates]  # same prefetch: residency is the change
    assert all(c.prefetch_layers == rec.steps[0].placement.prefetch_layers for c in candidates)
    assert max(extra) <= room < max(extra) + layer  # the most resident one leaves less than a layer unused


def test_a_budget_below_what_was_free_is_the_limit(tmp_path):
    rec = _recording()
    budget = 8 * GiB
    others = rec.steps[0].device_total_bytes - FREE_AT_START
    room = _room(others + budget)
    start = rec.steps[0].placement.resident_layers
    candidates = _candidates(_tuner(tmp_path, budget_bytes=budget))
    assert 0 < room < _room(rec.steps[0].device_total_bytes)
    assert all((c.resident_layers - start) * rec.layer_bytes[0] <= room for c in candidates)


def test_raw_kept_on_the_warmup_gives_a_single_list_the_staging_room_as_resident_layers(tmp_path):
    """One list (the Wan-1.3B harness of test_monitor_hooks, candidates scripted): the calibration
    keeps resident=3, the warmup's A/B keeps raw, and the staging room held free for compression
    (350 MiB here, blocks of 100 MiB) becomes 3 more resident layers at the same prefetch."""
    from sglang_autoperf.retune.compression import AB_STEPS
    from sglang_autoperf.retune.schedule import calibration_steps
    from test_live_lists import DecidingChoice
    from test_monitor_hooks import R0P8, R3P3, START, _tuner as scripted_tuner, _warmup

    tuner = scripted_tuner(tmp_path, {START: [200.0] * 8, R3P3: [150.0] * 4, R0P8: [180.0] * 4})
    tuner.layer_bytes = lambda steps=None: [100 << 20] * 30
    tuner.compression = choice = DecidingChoice(350 << 20)
    _warmup(tuner, steps=calibration_steps() + AB_STEPS)
    assert choice.committed == [False]
    [result] = tuner.results.values()
    grown = result.chosen()
    assert (grown.resident_layers, grown.prefetch_layers, grown.policy) == (3 + 3, R3P3.prefetch_layers, R3P3.policy)
    assert tuner.placement() == grown and "staging room" in result.reason
