"""Live retuning of a DiT with several layer lists (issue 17): the worker's tuner calibrates a
placement per list inside the memory it measured, caches it with that memory reading, and a later
start applies it without measuring. Driven by the FLUX.1-dev traces and the memory reading the
in-process sweep recorded on an H200 (tests/fixtures/traces, benchmarks/results/2026-11-29-h200-sweep);
the managers are stand-ins of sglang's (no GPU here: tests/test_contract_lists.py changes
placements on sglang's real managers), the step times come from a copy-floor model stated below."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from sglang_autoperf.cache import TuningCache
from sglang_autoperf.measure.live import WorkerTuner
from sglang_autoperf.retune.lists import ListPlacement, placed_bytes, streamed_bytes
from sglang_autoperf.retune.memory import PEAK_ERROR_MARGIN_BYTES
from sglang_autoperf.settings import Settings
from test_list_candidates import DOUBLE, GiB, START_16G, lists_of, recording, start_placement

H200_TOTAL = 150_109_880_320  # bytes, as the sweep's cudaMemGetInfo reported
RESIDENT_STEP_MS = 148.6  # everything resident, measured in the sweep (its README)
LINK_BYTES_PER_S = 55.1e9  # pinned host-to-device, measured in the sweep's worker
IDENTITY = {"rank": 0, "performance_mode": "auto", "pinned": [], "num_gpus": 1, "layout": "tp1", "lora": (),
            "sglang_version": "0.5.23", "torch_version": "2.11.0"}
SHAPE = {"width": 1024, "height": 1024, "num_frames": 1, "batch_size": 1, "cfg": False, "is_warmup": True,
         "steps": 15}


def _managers(start: ListPlacement) -> dict:
    """Two offload managers as sglang builds them for FLUX.1 (19 double, 38 single blocks)."""
    out = []
    for key, n in ((DOUBLE, 19), ("transformer.single_transformer_blocks", 38)):
        p = start.get(key)
        out.append(SimpleNamespace(layers_attr_str=key.split(".", 1)[1], num_layers=n, resident_layers=p.resident_layers,
                                   prefetch_size=p.prefetch_layers, residency_policy=p.policy,
                                   residency_lifetime="forward"))
    return {"transformer": out}


class FloorMonitor:
    """The recorded baseline trace for every step; the step time a placement gets is the sweep's
    finding near 16 GiB ("the step sits on the copy floor"): max(resident step, streamed bytes /
    link rate); the memory reading is the recorded one, moved by the bytes a placement places."""

    def __init__(self, tuner_ref: list, others_bytes: int = 0, overcount_bytes: int = 0):
        self.others_bytes = others_bytes  # what another process (a ballast) holds on the card
        # what every placement but the start really places less than retune/lists.placed_bytes says
        # (FLUX.2-klein at 8 GiB on an H200: 0.22-0.23 GiB for each of 10 doubles-resident placements
        # beside a ballast, benchmarks/results/2026-11-29-h200-klein)
        self.overcount_bytes = overcount_bytes
        self.rec = recording(START_16G)
        self.lists, self.start = lists_of(self.rec), start_placement(self.rec)
        self.tuner_ref, self.order, self.attached = tuner_ref, [], False

    def attach(self):
        self.attached = True

    def detach(self):
        self.attached = False

    def begin_step(self, step, placement):
        self.current = (step, self.tuner_ref[0].placement())
        self.order.append(self.current[1])

    def end_step(self):
        return self.current

    def resolve(self, pending):
        step, placement = pending
        mem = self.rec.meta["memory"]
        extra = placed_bytes(self.lists, placement) - placed_bytes(self.lists, self.start)
        extra -= self.overcount_bytes if placement != self.start else 0
        ms = max(RESIDENT_STEP_MS, streamed_bytes(self.lists, placement) / LINK_BYTES_PER_S * 1e3)
        reserved = mem["reserved_peak_bytes"] + extra
        return replace(self.rec.steps[-1], step=step, wall_ms=ms, placement=placement.lists[0][1],
                       peak_allocated_bytes=mem["allocated_peak_bytes"] + extra, peak_reserved_bytes=reserved,
                       reserved_bytes=reserved,
                       device_used_bytes=reserved + mem["non_allocator_bytes"] + self.others_bytes,
                       device_total_bytes=H200_TOTAL)


def _tuner(tmp_path, budget_gib=16, others_bytes=0, overcount_bytes=0) -> WorkerTuner:
    """`budget_gib` None: no SGLANG_AUTOPERF_VRAM_BUDGET, the limit is what was free at planning."""
    start = start_placement(recording(START_16G))
    managers = _managers(start)
    plan = SimpleNamespace(model_fingerprint="fp", gpu_key={"name": "NVIDIA H200"},
                           budget_bytes=budget_gib * GiB if budget_gib else None,
                           free_bytes_at_start=H200_TOTAL - others_bytes, plan={"predicted": {"vram_bytes": 17067336228}})
    ref: list = []
    tuner = WorkerTuner(plan, Settings(enabled=True, cache_dir=str(tmp_path)), managers, IDENTITY,
                        monitor=FloorMonitor(ref, others_bytes, overcount_bytes), cache=TuningCache(str(tmp_path)),
                        policies=("leading", "strided"), device_total=lambda: H200_TOTAL)
    ref.append(tuner)
    rec = recording(START_16G)
    tuner.layer_bytes = lambda steps=None: list(rec.layer_bytes)  # the recorded blocks' bytes, list by list

    def set_placement(m, *, prefetch_layers, resident_layers, policy):
        m.resident_layers, m.prefetch_size, m.residency_policy = resident_layers, prefetch_layers, policy
    tuner.set_placement = set_placement
    return tuner


def _warmup(tuner):
    tuner.begin_request(SHAPE)
    for _ in range(SHAPE["steps"]):
        tuner.run_step(lambda: None, (), {})
    tuner.end_request()


def test_a_flux_calibration_moves_residency_per_list_within_the_measured_memory(tmp_path):
    tuner = _tuner(tmp_path)
    start = tuner.placement()
    assert isinstance(start, ListPlacement) and start == start_placement(recording(START_16G))  # 9/9, prefetch 2
    _warmup(tuner)
    monitor, lists = tuner.monitor, tuner.monitor.lists
    tried = list(dict.fromkeys(monitor.order))
    assert tried[0] == start and len(tried) > 1  # candidates were measured
    [result] = tuner.results.values()
    memory = result.memory
    assert memory["limit_bytes"] == 16 * GiB and memory["measured_peak_bytes"] < memory["predicted_peak_bytes"]
    for p in tried:  # no candidate's peak (as the reading predicts it) crosses the limit less the margin
        assert memory["fixed_bytes"] + placed_bytes(lists, p) + memory["margin_bytes"] <= memory["limit_bytes"]
    chosen = result.chosen()
    assert tuner.placement() == chosen != start
    # the double blocks (least compute per byte) got the residency; the step got faster
    assert chosen.get(DOUBLE).resident_layers > start.get(DOUBLE).resident_layers
    assert streamed_bytes(lists, chosen) < streamed_bytes(lists, start)
    assert result.stats[chosen.label()].median_ms < result.stats[start.label()].median_ms


def test_a_second_start_applies_the_cached_per_list_placement_and_measures_nothing(tmp_path):
    first = _tuner(tmp_path)
    _warmup(first)
    [result] = first.results.values()
    chosen = result.chosen()
    second = _tuner(tmp_path)  # a new process: its managers start at the plan's 9/9 again
    assert second.placement() != chosen
    second.begin_request(dict(SHAPE, is_warmup=False))
    assert second.placement() == chosen and second.calibration is None
    for _ in range(3):
        second.run_step(lambda: None, (), {})
    second.end_request()
    assert second.monitor.order == []  # nothing measured


def test_a_pinned_prefetch_holds_on_every_list(tmp_path):
    tuner = _tuner(tmp_path)
    tuner.fixed = frozenset({"prefetch_layers"})
    _warmup(tuner)
    for p in dict.fromkeys(tuner.monitor.order):
        assert [q.prefetch_layers for _, q in p.lists] == [2, 2]
    assert all(m.prefetch_size == 2 for m in tuner.primary)


def test_a_smaller_limit_shrinks_what_the_candidates_place(tmp_path):
    tuner = _tuner(tmp_path, budget_gib=14)
    _warmup(tuner)
    [result] = tuner.results.values()
    m = result.memory
    for p in dict.fromkeys(tuner.monitor.order[1:]):
        if p != tuner.monitor.start:
            assert m["fixed_bytes"] + placed_bytes(tuner.monitor.lists, p) + m["margin_bytes"] <= 14 * GiB


def test_a_cache_entry_with_a_broken_list_placement_is_a_miss_and_calibration_runs(tmp_path):
    """A per-list entry edited by hand (negative resident count): one warning, a miss, a calibration."""
    import json

    first = _tuner(tmp_path)
    _warmup(first)
    [path] = list(tmp_path.glob("*.json"))
    doc = json.loads(path.read_text())
    doc["result"]["list_placement"][0][1]["resident_layers"] = -3
    path.write_text(json.dumps(doc))
    second = _tuner(tmp_path)
    second.begin_request(SHAPE)
    assert second.calibration is not None and second.placement() == second.calibration.baseline


def test_beside_another_process_the_limit_is_what_was_free_at_planning(tmp_path):
    """As on the H200 beside a ballast holding all but 16 GiB (benchmarks/results/2026-11-29-h200-lists):
    no budget set, the other process's memory counts against the card, never against the DiT."""
    others = H200_TOTAL - 16 * GiB
    tuner = _tuner(tmp_path, budget_gib=None, others_bytes=others)
    _warmup(tuner)
    [result] = tuner.results.values()
    m, lists = result.memory, tuner.monitor.lists
    assert m["limit_bytes"] == H200_TOTAL and m["fixed_bytes"] > others  # the other process is a fixed cost
    tried = list(dict.fromkeys(tuner.monitor.order))
    assert len(tried) > 1
    for p in tried:  # what this process may use: the 16 GiB that were free
        assert m["fixed_bytes"] - others + placed_bytes(lists, p) + m["margin_bytes"] <= 16 * GiB
    assert result.chosen() != tried[0]


def test_a_list_the_traced_steps_never_ran_keeps_its_placement(tmp_path):
    """Wan2.2-A14B: two experts, one list each, and a step runs one of them. Here a third manager
    (a second component) is never traced: the candidates move only the traced lists."""
    tuner = _tuner(tmp_path)
    idle = SimpleNamespace(layers_attr_str="blocks", num_layers=40, resident_layers=3, prefetch_size=2,
                           residency_policy="strided", residency_lifetime="forward")
    tuner.managers["transformer_2"] = [idle]
    tuner.by_list["transformer_2.blocks"] = idle
    rec = recording(START_16G)
    tuner.layer_bytes = lambda steps=None: list(rec.layer_bytes) + [100 << 20] * 40  # traced lists first
    _warmup(tuner)
    tried = list(dict.fromkeys(tuner.monitor.order))
    assert len(tried) > 1
    assert {p.get("transformer_2.blocks").resident_layers for p in tried} == {3}
    assert (idle.resident_layers, idle.prefetch_size) == (3, 2)


def test_a_cache_hit_beside_a_bigger_process_shrinks_the_placement_to_what_is_free(tmp_path):
    """Calibrated with 16 GiB free and no budget (the key does not hold free memory); the next start
    finds only 12 GiB free: the cached placement would not fit, so the worker applies the fullest
    placement that does, by the stored memory reading, instead of the cached one."""
    first = _tuner(tmp_path, budget_gib=None, others_bytes=H200_TOTAL - 16 * GiB)
    _warmup(first)
    [result] = first.results.values()
    cached, m = result.chosen(), result.memory
    lists = first.monitor.lists
    second = _tuner(tmp_path, budget_gib=None, others_bytes=H200_TOTAL - 12 * GiB)
    second.begin_request(dict(SHAPE, is_warmup=False))
    applied = second.placement()
    ours = m["fixed_bytes"] - m["others_bytes"]  # this process's fixed use, as measured
    assert ours + placed_bytes(lists, cached) + m["margin_bytes"] > 12 * GiB  # the cached one would not fit
    assert ours + placed_bytes(lists, applied) + m["margin_bytes"] <= 12 * GiB
    assert applied != cached and second.calibration is None
    third = _tuner(tmp_path, budget_gib=None, others_bytes=H200_TOTAL - 16 * GiB)
    third.begin_request(dict(SHAPE, is_warmup=False))
    assert third.placement() == cached  # as much room as at calibration: the cached placement itself


def test_a_kept_start_that_ran_under_the_limit_but_inside_the_margin_is_not_shrunk_after(tmp_path):
    """FLUX.2-klein at 8 GiB free (H200, benchmarks/results/2026-11-29-h200-families-check): the start
    peaked 0.55 GiB under the limit, less than the margin kept free, so its candidates were smaller,
    measured slower, and the start was kept; the same process then shrank that kept start at its next
    request, and so did the warm start. Here the start peaks 0.25 GiB under what is free."""
    rec = recording(START_16G)
    mem = rec.meta["memory"]
    free = mem["reserved_peak_bytes"] + mem["non_allocator_bytes"] + GiB // 4
    first = _tuner(tmp_path, budget_gib=None, others_bytes=H200_TOTAL - free)
    start, resolve = first.placement(), first.monitor.resolve

    def start_fastest(pending):  # every other placement 9.5% slower, as Klein's candidate measured (the
        step = resolve(pending)  # copy-floor model here would rank a smaller placement with less prefetch faster)
        return step if pending[1] == start else replace(step, wall_ms=step.wall_ms * 1.095)
    first.monitor.resolve = start_fastest
    _warmup(first)
    [result] = first.results.values()
    assert result.chosen() == start  # its candidates (smaller: the start is over the margin) were slower
    assert len(set(first.monitor.order)) > 1
    first.begin_request(dict(SHAPE, is_warmup=False))
    assert first.placement() == start
    second = _tuner(tmp_path, budget_gib=None, others_bytes=H200_TOTAL - free)
    second.begin_request(dict(SHAPE, is_warmup=False))
    assert second.placement() == start and second.calibration is None
    third = _tuner(tmp_path, budget_gib=None, others_bytes=H200_TOTAL - free + GiB)  # 1 GiB less room
    third.begin_request(dict(SHAPE, is_warmup=False))
    assert placed_bytes(third.monitor.lists, third.placement()) < placed_bytes(third.monitor.lists, start)


def _start_room(tuner) -> int:
    """What the start's reading allowed to place (recomputed here from the recorded reading)."""
    mon = tuner.monitor
    mem = mon.rec.meta["memory"]
    peak = mem["reserved_peak_bytes"] + mem["non_allocator_bytes"]
    return 16 * GiB - (peak - placed_bytes(mon.lists, mon.start)) - PEAK_ERROR_MARGIN_BYTES


def test_a_second_reading_at_a_faster_candidate_measures_a_fuller_placement_that_fits(tmp_path):
    """The start's reading over-counts what the candidates place (as it did on FLUX.2-klein): the
    reading at the first faster candidate shows the room, and a fuller placement is measured and kept;
    its true peak stays within the limit less the margin, and the closing baseline still runs."""
    over = GiB // 2
    tuner = _tuner(tmp_path, overcount_bytes=over)
    room = _start_room(tuner)
    _warmup(tuner)
    mon, lists = tuner.monitor, tuner.monitor.lists
    tried = list(dict.fromkeys(mon.order))
    fuller = [p for p in tried if placed_bytes(lists, p) > room]
    assert fuller, "nothing beyond the start reading's room was measured"
    for p in fuller:
        assert placed_bytes(lists, p) - over <= room  # its true peak keeps the margin free
    assert mon.order[-1] == mon.start  # the closing baseline ran (the warmup's 15 steps held it)
    [result] = tuner.results.values()
    assert result.chosen() in fuller
    read_at = ListPlacement.from_dict(result.memory["placement"])  # the cached reading: the second one
    assert read_at in tried and read_at != mon.start
    from sglang_autoperf.report import format_calibration_table
    assert "memory at the first faster candidate" in format_calibration_table(result)


def test_without_an_error_in_the_start_reading_nothing_beyond_its_room_is_tried(tmp_path):
    tuner = _tuner(tmp_path)
    room = _start_room(tuner)
    _warmup(tuner)
    assert all(placed_bytes(tuner.monitor.lists, p) <= room for p in tuner.monitor.order)


class DecidingChoice:
    """Stands in for measure/compressed.CompressionChoice, whose A/B times steps with CUDA events (no
    GPU here): the same calls the tuner makes, and once it has run the A/B's steps it reports raw
    streaming faster, as the real A/B does where compressed is not more than 2% faster."""

    def __init__(self, staging_bytes: int):
        self.staging, self.streaming = staging_bytes, SimpleNamespace(decided=False)
        self.ab_steps, self.committed = None, []

    @property
    def measuring(self) -> bool:
        return self.ab_steps is not None

    def staging_bytes(self) -> int:
        return 0 if self.committed == [False] else self.staging

    def begin_request(self, cached_choice, calibrating: bool, placement_label: str) -> None:
        if self.streaming.decided or self.ab_steps is not None:
            return
        if cached_choice is not None:
            self.commit(cached_choice, "cache")
        elif not calibrating:
            self.ab_steps = 0

    def run_step(self, original, args, kwargs, first_of_request: bool):
        self.ab_steps += 0 if first_of_request else 1
        return original(*args, **kwargs)

    def end_request(self):
        from sglang_autoperf.retune.compression import AB_STEPS

        if self.ab_steps is None or self.ab_steps < AB_STEPS:
            return None
        self.commit(False, "measured")
        return False, {"raw": 230.0, "compressed": 231.0}

    def commit(self, keep: bool, why: str) -> None:
        self.streaming.decided, self.ab_steps = True, None
        self.committed.append(keep)


def test_the_warmup_decides_compression_after_calibrating_and_raw_gives_its_staging_room_to_residency(tmp_path):
    from sglang_autoperf.retune.compression import AB_STEPS
    from sglang_autoperf.retune.schedule import calibration_steps

    staging = 3 * GiB // 4  # more than a double block (this recording's 19 doubles hold 0.32-0.54 GiB each)
    tuner = _tuner(tmp_path)
    tuner.compression = choice = DecidingChoice(staging)
    shape = dict(SHAPE, steps=calibration_steps() + AB_STEPS)
    tuner.begin_request(shape)
    for _ in range(shape["steps"]):
        tuner.run_step(lambda: None, (), {})
    calibrated = tuner.results[tuner.bucket(shape)].chosen() if tuner.results else None
    tuner.end_request()
    assert choice.committed == [False] and tuner.calibration is None
    [result] = tuner.results.values()
    m, lists = result.memory, tuner.monitor.lists
    assert result.compressed_streaming is False
    tried = list(dict.fromkeys(tuner.monitor.order))
    room_with_staging = 16 * GiB - m["fixed_bytes"] - PEAK_ERROR_MARGIN_BYTES - staging
    assert all(placed_bytes(lists, p) <= room_with_staging for p in tried)  # calibrated with the staging kept free
    grown = result.chosen()
    assert tuner.placement() == grown != calibrated and grown not in tried
    assert placed_bytes(lists, grown) > room_with_staging
    assert m["fixed_bytes"] + placed_bytes(lists, grown) + m["margin_bytes"] <= 16 * GiB
    assert m["margin_bytes"] == PEAK_ERROR_MARGIN_BYTES  # the staging term is gone from the stored rule
    assert all(grown.get(k).prefetch_layers == calibrated.get(k).prefetch_layers and
               grown.get(k).resident_layers >= calibrated.get(k).resident_layers for k, _ in grown.lists)
    warm = _tuner(tmp_path)  # the next start: the cached placement and choice, no A/B, nothing measured
    warm.compression = DecidingChoice(staging)
    warm.begin_request(dict(SHAPE, is_warmup=False))
    assert warm.placement() == grown and warm.compression.committed == [False] and not warm.compression.measuring
