"""Worker-side glue: measure during warmup, retune the live offload managers, cache the result.

Every hook here passes straight through unless `attach_worker` found layerwise-offloaded DiT
managers on a CUDA worker. Placement changes happen only at safe points: between denoising steps
of a *warmup* request (its output is discarded), or at the start of a real request. A real
request never sees its placement change mid-way.

Calibration, per shape bucket, once, on the schedule of retune/schedule.py: the start placement,
the candidates the retuner predicts faster within the free VRAM (only the knobs the user left
free), the start placement again; a candidate is kept only if measured faster beyond the spread.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Callable

from sglang_autoperf.sglang_adapter import contract as sa
from sglang_autoperf.cache import COMPILE_OBJECTIVE, TuningCache, TuningResult, format_when, shape_bucket, tuning_key
from sglang_autoperf.measure.compile_check import CompileChecker
from sglang_autoperf.measure.compressed import CompressionChoice, attach_compression, is_oom
from sglang_autoperf.measure.monitor import OverlapMonitor
from sglang_autoperf.plan.objective import placement_objective
from sglang_autoperf.report import format_calibration_table
from sglang_autoperf.retune.compression import AB_STEPS
from sglang_autoperf.retune.lists import (
    LayerList, ListPlacement, fill_resident, layer_lists_of, list_key, placed_bytes, propose_lists)
from sglang_autoperf.retune.memory import (
    PEAK_ERROR_MARGIN_BYTES, MemoryCorrection, MemoryReading, fill_residency, memory_correction)
from sglang_autoperf.retune.retuner import all_resident_note, decide, layer_lists, propose
from sglang_autoperf.trace import PLACEMENT_KNOBS, Placement, StepTrace, TraceRecording, placement_problem
from sglang_autoperf.retune.schedule import (
    MAX_CALIBRATION_S,
    MAX_CANDIDATES,
    STEPS_PER_TRIAL,
    affordable_candidates,
    calibration_steps,
)
from sglang_autoperf.log import logger, step_aside
from sglang_autoperf.units import gib


def request_bucket(shape: dict[str, Any]) -> str:
    return shape_bucket(shape["width"], shape["height"], shape["num_frames"], shape["batch_size"], shape["cfg"])


def worker_tuning_key(plan, identity: dict[str, Any], bucket: str, batch_size: int, objective: str,
                      budget: str | None):
    """The cache key of a result measured in this worker (what the startup plan looked up)."""
    return tuning_key(fingerprint=plan.model_fingerprint or "", gpu_key=plan.gpu_key or {}, identity=identity,
                      bucket=bucket, batch_size=batch_size, budget=budget, objective=objective)


@dataclass
class Calibration:
    bucket: str
    batch_size: int
    step_mode: bool  # True: trials switch between steps of a warmup request; False: between requests
    baseline: "Placement | ListPlacement"  # a ListPlacement where the DiT has several layer lists
    objective: str
    max_candidates: int
    started: float  # the tuner's clock at the start
    trials: list[Placement] = field(default_factory=list)
    trial: int = 0
    skip_next: bool = True
    measured: dict[Placement, list[float]] = field(default_factory=dict)
    traces: dict[Placement, list[StepTrace]] = field(default_factory=dict)
    failed: dict[Placement, str] = field(default_factory=dict)
    proposed: bool = False
    done: bool = False
    steps_used: int = 0
    measured_in_trial: int = 0  # per trial, not per placement: the closing baseline needs its own 2 steps
    memory: Any = None  # retune/memory.MemoryCorrection: the reading that sized the candidates (several layer lists)
    refined: bool = False  # the second reading, at the first candidate faster than the start, was taken
    reserved_steps: int = 0  # of a warmup request, kept for the compressed-vs-raw A/B after the calibration

    def __post_init__(self):
        self.trials = [self.baseline]

    @property
    def placement(self) -> Placement:
        return self.trials[self.trial]


class WorkerTuner:
    """Calibrates and applies placements of one worker's offloaded DiT layer lists.

    Only the knobs the user left free move: `fixed` (from the pinned flags) keeps the others at
    what sglang started with, in calibration and on a cache hit alike."""

    def __init__(self, plan, settings, managers: dict[str, list], identity: dict[str, Any], *,
                 monitor=None, cache=None, fixed: frozenset[str] = frozenset(), policies: tuple[str, ...] = (),
                 set_placement=None, clock: Callable[[], float] = time.perf_counter,
                 give_up: Callable[[str, BaseException], None] | None = None,
                 device_total: Callable[[], int] | None = None):
        self.plan = plan
        self.settings = settings
        self.managers = managers
        self.primary = managers.get("transformer") or next(iter(managers.values()))
        self.identity = identity
        self.fixed = frozenset(fixed)
        self.policies = tuple(policies)
        # how a manager's placement is changed (sglang_contract.set_manager_placement on a worker)
        self.set_placement = set_placement or sa.set_manager_placement
        self.monitor = monitor if monitor is not None else OverlapMonitor(managers)
        self.cache = cache if cache is not None else TuningCache(settings.cache_dir)
        self.clock = clock  # calibration's time limit and the time it reports
        self.device_total = device_total or _device_total_bytes  # the card's size (cudaMemGetInfo)
        # what an error of ours calls: the owning LiveRun steps aside (restore, stop, one line)
        self.give_up = give_up or (lambda what, exc: step_aside(f"live tuning ({what})", exc))
        self.results: dict[str, Any] = {}  # bucket -> TuningResult
        self.fitted: dict[str, Any] = {}  # bucket -> what of a cached result fits this start (_fitting), once
        self.calibration: Calibration | None = None
        self.request: dict[str, Any] | None = None
        # layer list key (component.list) -> its manager; FLUX.1: double and single blocks; Wan2.2:
        # one list per expert. With more than one, placements are per list (retune/lists).
        self.by_list = {list_key(c, sa.manager_layer_list_name(m)): m for c, group in managers.items() for m in group}
        self.recorded: list[StepTrace] = []  # every traced step of this request, for the trace dir
        # Sampled steps (no calibration) are read at the request's end, not after each step: reading
        # events waits for the GPU, and a host sync on the hot path takes away the host's lead over
        # it. (Traced steps cost 3.9% before this and one hook fewer per layer, 3.1% after: H200,
        # Wan-1.3B 17f, 2026-11-27.)
        self.unread: list = []
        self.requests_seen = 0
        self.compression: CompressionChoice | None = None  # compressed streaming (issue 18), where built

    @classmethod
    def for_worker(cls, worker, plan, settings, managers: dict[str, list]) -> "WorkerTuner":
        identity = sa.worker_identity(worker.server_args, rank=sa.worker_rank(worker))
        return cls(plan, settings, managers, identity, fixed=sa.pinned_placement_knobs(identity["pinned"]),
                   policies=sa.residency_policies())

    # -- placement ---------------------------------------------------------------------------

    @property
    def several_lists(self) -> bool:
        return len(self.by_list) > 1

    def placement(self) -> "Placement | ListPlacement":
        """What the managers run now: one Placement, or one per layer list where there are several."""
        def of(m) -> Placement:
            s = sa.manager_setting(m)
            return Placement(s["resident_layers"], s["prefetch_layers"], s["policy"])
        if not self.several_lists:
            return of(self.primary[0])
        return ListPlacement(tuple((key, of(m)) for key, m in self.by_list.items()))

    def _per_list(self, placement: "Placement | ListPlacement") -> ListPlacement:
        if isinstance(placement, Placement):  # sglang's flags: one placement for every list
            return ListPlacement.uniform(self.by_list, placement)
        return placement

    def apply(self, placement: "Placement | ListPlacement") -> None:
        """Every list whose placement differs from `placement` changes (between forward passes);
        knobs the user pinned keep their values: the last guard."""
        current = self._per_list(self.placement())
        target = self._per_list(placement)
        for key, manager in self.by_list.items():
            p = target.get(key).keeping(current.get(key), self.fixed)
            if p != current.get(key):
                self.set_placement(manager, prefetch_layers=p.prefetch_layers, resident_layers=p.resident_layers,
                                   policy=p.policy)

    def layer_counts(self) -> list[int]:
        return [sa.manager_setting(m)["num_layers"] for group in self.managers.values() for m in group]

    def layer_bytes(self, steps: list[StepTrace] | None = None) -> list[int]:
        """Bytes of every offloaded layer, list after list: in the order the traces met the lists
        (the retuner's contract), else in manager order. FLUX: 19 double then 38 single blocks."""
        per_list = {
            (component, sa.manager_layer_list_name(m)): [
                sa.manager_layer_bytes(m, i) for i in range(sa.manager_setting(m)["num_layers"])]
            for component, group in self.managers.items() for m in group
        }
        order = [(c, name) for c, name, _ in layer_lists(steps)] if steps else list(per_list)
        order += [k for k in per_list if k not in order]
        return [b for key in order for b in per_list.get(key, [])]

    def objective(self) -> str:
        # Where a DiT is streamed at all, a pinned --dit-layerwise-offload can only be on.
        pinned_offload = True if "dit_layerwise_offload" in self.identity["pinned"] else None
        return placement_objective(self.identity["performance_mode"], pinned_offload)

    # -- cache -------------------------------------------------------------------------------

    def bucket(self, shape: dict[str, Any]) -> str:
        return request_bucket(shape)

    def key(self, bucket: str, batch_size: int):
        return worker_tuning_key(self.plan, self.identity, bucket, batch_size, self.objective(),
                                 self.settings.vram_budget)

    def cached_result(self, bucket: str, batch_size: int):
        """This bucket's cached result if it fits this DiT (layer counts, policy names); a result
        that does not is a logged miss."""
        result = self.cache.get(self.key(bucket, batch_size))
        if result is None:
            return None
        problem = self._result_problem(result)
        if problem:
            logger().warning("[autoperf] ignoring the tuning cache entry for %s: %s; calibrating instead", bucket, problem)
            return None
        logger().info("[autoperf] tuning cache hit for %s: %s (calibrated %s); no calibration needed",
                      bucket, result.chosen().label(), format_when(result.created_at))
        return result

    def _fitting(self, bucket: str, result) -> "Placement | ListPlacement | None":
        """The cached placement; shrunk, by the measured rule, only where this start has less room
        beside other processes than the calibration had (with no budget set the key is the same
        either way); None where even nothing resident would fit (the startup placement then stands)."""
        target = result.chosen()
        if not isinstance(target, ListPlacement) or not result.memory or not self._free_at_start():
            return target
        total = self.device_total()
        calibrated = MemoryCorrection.from_dict(result.memory)
        memory = calibrated.beside(self.others_bytes(total), self.memory_limit_bytes(total))
        lists = self._layer_lists()
        # The kept placement ran through its calibration (and the compression A/B) within that room:
        # with no less room it stands as measured. Checked against the margin instead, FLUX.2-klein's
        # kept start d4/s4 (0.55 GiB under the limit, 0.84 kept free) was shrunk to d5/s2 by the very
        # process that had just measured it, and by the warm start (its calibration had measured d5/s2
        # at prefetch 1 9.5% slower; H200, benchmarks/results/2026-11-29-h200-families-check).
        if memory.limit_bytes - memory.others_bytes >= calibrated.limit_bytes - calibrated.others_bytes \
                or memory.fits(lists, target):
            return target
        shrunk = fill_residency(lists, memory, target, _calibrated_order(lists, target))
        logger().info("[autoperf] %s: the cached %s needs more memory than this start has beside other processes "
                      "(%s placeable); %s", bucket, target.label(), gib(memory.placeable_bytes, 2),
                      f"applying {shrunk.label()}" if shrunk else "the startup placement stands")
        return shrunk

    def _layer_lists(self) -> list[LayerList]:
        """Every offloaded list with its blocks' bytes, in manager order."""
        flat, out = self.layer_bytes(), []
        for key, manager in self.by_list.items():
            n = sa.manager_setting(manager)["num_layers"]
            out.append(LayerList(key, tuple(flat[:n])))
            flat = flat[n:]
        return out

    def _free_at_start(self) -> int | None:
        return getattr(self.plan, "free_bytes_at_start", None)

    def _result_problem(self, result) -> str | None:
        """Why a cached result cannot run on this DiT (None: it can)."""
        target = result.chosen()
        if isinstance(target, Placement):
            return placement_problem(target, self.layer_counts(), self.policies or (target.policy,))
        keys = sorted(key for key, _ in target.lists)  # stored as a map: the order is not kept
        if keys != sorted(self.by_list):
            return f"its layer lists {', '.join(keys)} are not this DiT's ({', '.join(self.by_list)})"
        for key, p in target.lists:
            count = sa.manager_setting(self.by_list[key])["num_layers"]
            problem = placement_problem(p, [count], self.policies or (p.policy,))
            if problem:
                return f"{key}: {problem}"
        return None

    # -- request boundaries ------------------------------------------------------------------

    def begin_request(self, shape: dict[str, Any]) -> None:
        self._begin_placement(shape)
        if self.compression is not None:
            result = self.results.get(self.request["bucket"])
            self.compression.begin_request(result.compressed_streaming if result is not None else None,
                                           self.calibration is not None, self.placement().label())

    def _begin_placement(self, shape: dict[str, Any]) -> None:
        bucket = self.bucket(shape)
        self.request = dict(shape, bucket=bucket, step=0)
        self.unread.clear()  # steps of a request that never reached its end (it failed): not this one's
        if self.calibration is not None and self.calibration.bucket == bucket and not self.calibration.step_mode:
            self._apply_pending_trial()
            return
        if bucket in self.results and self.results[bucket] is None:
            return  # not tunable live (already said so once)
        result = self.results.get(bucket)
        if result is None:
            result = self.cached_result(bucket, shape["batch_size"])
            if result is not None:
                self.results[bucket] = result
        if result is not None:
            if bucket not in self.fitted:
                self.fitted[bucket] = self._fitting(bucket, result)
            before, target = self.placement(), self.fitted[bucket]
            if target is None:
                return
            self.apply(target)  # pinned knobs stay; lists already there are not touched
            if self.placement() != before:
                logger().info("[autoperf] %s: applied %s before the request", bucket, self.placement().label())
            return
        why_not = self._why_not_tunable()
        if why_not:
            logger().info("[autoperf] %s; the startup placement stands", why_not)
            self.results[bucket] = None
            return
        self._start_calibration(bucket, shape)

    def _why_not_tunable(self) -> str | None:
        if self.objective() == "report":
            return "--performance-mode manual: live retuning reports only"
        if set(PLACEMENT_KNOBS) <= self.fixed:
            return "resident layers, prefetch and policy are all pinned: live retuning reports only"
        return None

    def _start_calibration(self, bucket: str, shape: dict[str, Any]) -> None:
        step_mode = shape["is_warmup"]
        reserved = AB_STEPS if step_mode and self._compression_undecided() else 0
        usable = affordable_candidates(shape["steps"] - reserved) if step_mode else MAX_CANDIDATES
        if step_mode and usable < 1:
            logger().info(
                "[autoperf] warmup request has %d steps; calibration needs at least %d: measuring only",
                shape["steps"], calibration_steps(1),
            )
        self.monitor.attach()
        self.calibration = Calibration(
            bucket=bucket, batch_size=shape["batch_size"], step_mode=step_mode, baseline=self.placement(),
            objective=self.objective(), max_candidates=min(MAX_CANDIDATES, usable), started=self.clock(),
            reserved_steps=reserved,
        )
        pinned = f"; pinned by the user: {', '.join(sorted(self.fixed))}" if self.fixed else ""
        logger().info(
            "[autoperf] calibrating %s %s, starting from %s%s",
            bucket,
            "during this warmup request (between its steps)" if step_mode
            else "across the first requests (placement changes only between requests)",
            self.calibration.baseline.label(), pinned,
        )

    def end_request(self) -> None:
        cal = self.calibration
        request, self.request = self.request, None
        self.requests_seen += 1
        self.read_sampled_steps()
        if self.settings.trace_dir and self.recorded and request is not None:
            self._write_traces(request)
        if self.compression is not None and request is not None:
            self._end_compression(request)
        if cal is None:
            return
        if cal.step_mode or cal.done:
            self._finish(cal)

    def _end_compression(self, request: dict[str, Any]) -> None:
        """The compression A/B's timed steps read; its choice, once made, stored with the bucket's result."""
        staging = self.compression.staging_bytes()
        try:
            outcome = self.compression.end_request()
        except Exception as exc:
            self.give_up("compressed streaming measurement", exc)
            return
        result = self.results.get(request["bucket"])
        if outcome is None or result is None:
            return
        result.compressed_streaming, result.compression_ms = outcome
        if not result.compressed_streaming:
            self._give_back_staging(request["bucket"], result, staging)
        if self.identity["rank"] == 0:
            self.cache.put(self.key(request["bucket"], request["batch_size"]), result)

    def _give_back_staging(self, bucket: str, result, staging: int) -> None:
        """Raw streaming kept: the room the calibration left for the staging buffer goes to resident
        layers, prefetch and policy as measured. More resident blocks at the same prefetch copy less
        and compute the same, so this is applied unmeasured (and said in the log and the cached reason)."""
        target = result.chosen()
        if staging <= 0 or "resident_layers" in self.fixed:
            return
        if isinstance(target, ListPlacement):
            if not result.memory:
                return
            # the calibration's reading without the staging term, filled list by list in its order
            memory = MemoryCorrection.from_dict(result.memory)
            memory = replace(memory, margin_bytes=max(PEAK_ERROR_MARGIN_BYTES, memory.margin_bytes - staging))
            lists = self._layer_lists()
            grown = fill_resident(lists, target, _calibrated_order(lists, target), memory.placeable_bytes)
        else:  # the single-list room held the staging buffer in full: that many more of its biggest layers
            grown = replace(target, resident_layers=min(
                self.layer_counts()[0], target.resident_layers + staging // max(self.layer_bytes())))
        if grown == target:
            return
        self.apply(grown)
        if isinstance(grown, ListPlacement):
            result.set_lists(grown, result.started(), memory.to_dict())
        else:
            result.placement = grown
        result.reason += f"; raw streaming kept: {grown.label()} holds the {gib(staging, 2)} of compression's staging room"
        logger().info("[autoperf] %s: raw streaming kept, so the %s kept free for the staging buffer hold resident "
                      "layers: %s (unmeasured: the same prefetch, fewer copies)", bucket, gib(staging, 2), grown.label())

    def measuring_compression(self) -> bool:
        return self.compression is not None and self.compression.measuring and self.calibration is None

    def read_sampled_steps(self) -> None:
        """Read the sampled steps' events (the request is over: waiting on them costs nothing)."""
        unread, self.unread = self.unread, []
        try:
            self.recorded.extend(self.monitor.resolve(p) for p in unread if p is not None)
        except Exception as exc:
            self.give_up("step trace", exc)

    # -- step boundaries ---------------------------------------------------------------------

    def run_step(self, original, args, kwargs):
        """One denoising step; our own failures disable tuning, the step itself always runs."""
        if self.measuring_compression() and self.request is not None:
            first = self.request["step"] == 0
            self.request["step"] += 1
            return self.compression.run_step(original, args, kwargs, first)
        try:
            cal, trace_it = self._before_step()
        except Exception as exc:
            self.give_up("step start", exc)
            return original(*args, **kwargs)
        if cal is None:
            result = original(*args, **kwargs)
            try:
                self._after_served_step(trace_it)
            except Exception as exc:
                self.give_up("step trace", exc)
            return result
        try:
            result = original(*args, **kwargs)
        except Exception as exc:
            if cal.placement == cal.baseline:  # sglang's own placement failed: its error, not ours
                _quietly(self.monitor.end_step)
                raise
            self._trial_failed(cal, exc)
            return original(*args, **kwargs)  # the failed step had not advanced the latents
        try:
            self._after_calibration_step(cal, trace_it)
        except Exception as exc:
            self.give_up("step measurement", exc)
        return result

    def _before_step(self) -> tuple["Calibration | None", bool]:
        """(the calibration this step belongs to, or None; whether the step is traced)."""
        cal, request = self.calibration, self.request
        if cal is not None and request is not None and not cal.done:
            # Across requests, a trial starts with the next request: steps left in this one
            # still run the previous placement and must not be counted for the next.
            trace_it = not cal.skip_next and (cal.step_mode or self.placement() == cal.placement)
            cal.skip_next = False
            if trace_it:
                self.monitor.begin_step(request["step"], _first_list(cal.placement))
            return cal, trace_it
        if request is not None and self.settings.traces_step(request["step"], self.requests_seen):
            self.monitor.attach()  # a sampled step carries the hooks; the steps between do not
            self.monitor.begin_step(request["step"], _first_list(self.placement()))
            return None, True
        return None, False

    def _after_served_step(self, traced: bool) -> None:
        if self.request is not None:
            self.request["step"] += 1
        if traced:
            self.unread.append(self.monitor.end_step())
            self.monitor.detach()

    def _after_calibration_step(self, cal: "Calibration", traced: bool) -> None:
        self.request["step"] += 1
        cal.steps_used += 1
        if not traced:
            return
        trace = self.monitor.resolve(self.monitor.end_step())
        self.recorded.append(trace)
        cal.measured.setdefault(cal.placement, []).append(trace.wall_ms)
        cal.traces.setdefault(cal.placement, []).append(trace)
        cal.measured_in_trial += 1
        if cal.measured_in_trial >= 2:
            self._advance(cal)
        if cal.done and cal.reserved_steps and self._compression_undecided():
            self._finish(cal)  # the warmup's steps left measure compressed against raw streaming
            self.compression.begin_request(None, False, self.placement().label())

    def _steps_left(self, cal: Calibration) -> int:
        """Steps of this warmup request the calibration may still use."""
        return self.request["steps"] - self.request["step"] - cal.reserved_steps

    def _compression_undecided(self) -> bool:
        return self.compression is not None and not self.compression.streaming.decided

    def _trial_failed(self, cal: "Calibration", exc: BaseException) -> None:
        """A candidate's step raised (out of memory, or anything sglang could not run with it): back
        to the start placement for the rest of the calibration, so the step runs again as sglang
        would have run it. If even that fails, tuning steps aside (the owner's give_up restores what it can)."""
        try:
            _quietly(self.monitor.end_step)
            self._rollback(cal, exc)
        except Exception as ours:
            self.give_up("rolling back a failed trial", ours)
        if self.request is not None:
            self.request["step"] += 1

    def _write_traces(self, request: dict[str, Any]) -> None:
        import torch

        steps, self.recorded = self.recorded, []
        rec = TraceRecording(
            source=(
                f"recorded by sglang-autoperf's overlap monitor on {torch.cuda.get_device_name()}, "
                f"{time.strftime('%Y-%m-%d')}, sglang {metadata.version('sglang')}, torch {torch.__version__}"
            ),
            layer_bytes=self.layer_bytes(steps),
            steps=steps,
            meta={"bucket": request["bucket"], "warmup": request["is_warmup"], "steps": request["steps"],
                  "model_fingerprint": self.plan.model_fingerprint, "rank": self.identity["rank"]},
        )
        os.makedirs(self.settings.trace_dir, exist_ok=True)
        path = os.path.join(
            self.settings.trace_dir, f"trace-rank{self.identity['rank']}-req{self.requests_seen}-pid{os.getpid()}.json"
        )
        with open(path, "w") as f:
            json.dump(rec.to_dict(), f)

    def _advance(self, cal: Calibration) -> None:
        if not cal.proposed:
            cal.proposed = True
            candidates = self._free_knobs_only(self._propose(cal), cal.baseline)
            cal.trials.extend(candidates)
            if candidates:
                cal.trials.append(cal.baseline)  # the closing baseline (see the module doc)
        elif not cal.refined and _agree_any(self._refine_due(cal)):  # every rank refines, or none (collectives)
            cal.refined = True
            self._refine(cal)
        cal.trial += 1
        cal.measured_in_trial = 0
        remaining_steps = self._steps_left(cal) if cal.step_mode else None
        # Clocks differ between ranks: one rank alone stopping early would leave the others
        # waiting in the next collective, so the ranks agree (any rank out of time stops all).
        out_of_time = _agree_any(self.clock() - cal.started > MAX_CALIBRATION_S)
        if (
            cal.trial >= len(cal.trials)
            or out_of_time
            or (remaining_steps is not None and remaining_steps < STEPS_PER_TRIAL)
        ):
            cal.trial = min(cal.trial, len(cal.trials) - 1)
            cal.done = True
            return
        if cal.step_mode:
            self.apply(cal.placement)
            cal.skip_next = True

    def _free_knobs_only(self, candidates: list, baseline) -> list:
        """The candidates as they will run (pinned knobs at the start's values), each once, the
        start itself left out: a label in the log and the cache is what was measured."""
        out: list = []
        for p in (_keeping(c, baseline, self.fixed) for c in candidates):
            if p != baseline and p not in out:
                out.append(p)
        return out

    def _apply_pending_trial(self) -> None:
        cal = self.calibration
        if cal.placement != self.placement():
            self.apply(cal.placement)
        cal.skip_next = True  # step 0 of a request is never measured

    def _propose(self, cal: Calibration) -> list:
        if cal.max_candidates < 1:
            return []
        if isinstance(cal.baseline, ListPlacement):
            return self._propose_lists(cal)
        steps = cal.traces[cal.baseline]
        candidates = propose(steps, self.layer_bytes(steps), cal.baseline, self._single_list_room(steps),
                             objective=cal.objective, max_candidates=cal.max_candidates, fixed=self.fixed)
        placements = _agree_on_placements([c.placement for c in candidates])
        for c in candidates:
            logger().info(
                "[autoperf] candidate %s: predicted %.1f ms/step, %s: %s",
                c.placement.label(), c.predicted_step_ms, gib(c.extra_vram_bytes, 2, signed=True), c.reason,
            )
        if not placements:
            logger().info("[autoperf] no candidate predicted faster within the measured memory; keeping %s",
                          cal.baseline.label())
        return placements

    def _single_list_room(self, steps: list[StepTrace]) -> int:
        """VRAM a single-list candidate may add to the start placement (the retuner prices each
        candidate's own extra bytes): the per-list path's rule (retune/memory) read as room above the
        peak the traced steps measured, card-wide: the limit, less the measured error margin and the
        compressed store's staging buffer, less that peak."""
        total = steps[-1].device_total_bytes
        staging = self.compression.staging_bytes() if self.compression is not None else 0
        peak, limit, others = _memory_reading(steps).peak_bytes, self.memory_limit_bytes(total), self.others_bytes(total)
        room = max(0, limit - PEAK_ERROR_MARGIN_BYTES - staging - peak)
        logger().info("[autoperf] memory at the start placement: this process peaked at %s of %s it may use; keeping "
                      "%s free (the prediction's measured error%s), candidates may add %s", gib(peak - others, 2),
                      gib(limit - others, 2), gib(PEAK_ERROR_MARGIN_BYTES + staging, 2),
                      f" + {gib(staging, 2)} for compressed streaming's staging buffer" if staging else "", gib(room, 2))
        return room

    def _list_reading(self, cal: Calibration, at: ListPlacement) -> "_ListReading":
        """The memory measured over `at`'s traced steps, as a correction against the real limit. Lists
        the traced steps never ran (Wan2.2's expert for the other noise levels) count in the fixed use."""
        steps = cal.traces[at]
        in_steps = layer_lists(steps)
        traced = [list_key(c, name) for c, name, _ in in_steps]
        layer_bytes = self.layer_bytes(steps)[:sum(n for _, _, n in in_steps)]  # traced lists first (its contract)
        lists = layer_lists_of(steps, layer_bytes)
        here = ListPlacement(tuple((key, at.get(key)) for key in traced))
        total = steps[-1].device_total_bytes
        staging = self.compression.staging_bytes() if self.compression is not None else 0
        # the startup model's peak for `at`: its figure for the start, moved by what `at` places beyond it
        start = ListPlacement(tuple((key, cal.baseline.get(key)) for key in traced))
        predicted = self.predicted_peak_bytes(total) + placed_bytes(lists, here) - placed_bytes(lists, start)
        memory = replace(memory_correction(
            _memory_reading(steps), lists, here, limit_bytes=self.memory_limit_bytes(total),
            predicted_peak_bytes=predicted, unread_bytes=staging), others_bytes=self.others_bytes(total))
        return _ListReading(steps, layer_bytes, lists, traced, here, memory, staging)

    def _list_candidates(self, cal: Calibration, reading: "_ListReading", max_candidates: int) -> list[ListPlacement]:
        """Per-list candidates from `reading`'s traces within its measured room, as the managers will run them."""
        candidates = propose_lists(reading.steps, reading.layer_bytes, reading.placement,
                                   reading.memory.placeable_bytes, max_candidates=max_candidates, fixed=self.fixed)
        for c in candidates:
            logger().info("[autoperf] candidate %s: %s", c.placement.label(), c.reason)
        return _agree_on_placements([ListPlacement(tuple(
            (key, c.placement.get(key) if key in reading.traced else p) for key, p in cal.baseline.lists))
            for c in candidates])

    def _propose_lists(self, cal: Calibration) -> list[ListPlacement]:
        """Per-list candidates that fit the memory measured at the baseline (retune/memory): the
        resident blocks and buffers a placement adds or frees are all that changes its peak."""
        reading = self._list_reading(cal, cal.baseline)
        cal.memory = m = reading.memory
        others = m.others_bytes  # the log speaks of this process alone
        logger().info("[autoperf] memory at the start placement: this process peaked at %s (the startup model "
                      "said %s) of %s it may use; keeping %s free (the prediction's measured error%s), %s can hold "
                      "resident layers and prefetch buffers", gib(m.measured_peak_bytes - others, 2),
                      gib(m.predicted_peak_bytes - others, 2), gib(m.limit_bytes - others, 2), gib(m.margin_bytes, 2),
                      f" + {gib(reading.staging, 2)} for compressed streaming's staging buffer" if reading.staging else "",
                      gib(m.placeable_bytes, 2))
        placements = self._list_candidates(cal, reading, cal.max_candidates)
        if not placements:
            logger().info("[autoperf] no per-list candidate predicted faster within the measured memory; keeping %s",
                          cal.baseline.label())
        return placements

    def _refine_due(self, cal: Calibration) -> bool:
        """A second reading is taken once, at the first candidate that measured faster than the start."""
        at = cal.placement
        if at == cal.baseline or not isinstance(at, ListPlacement) or cal.memory is None:
            return False
        times, base = cal.measured.get(at), cal.measured.get(cal.baseline)
        return bool(times and base) and statistics.median(times) < statistics.median(base)

    def _refine(self, cal: Calibration) -> None:
        """The start's reading predicts every placement's peak from one point, within -0.36..+0.44 GiB
        (retune/memory.PEAK_ERROR_MARGIN_BYTES); a reading at the candidate just measured predicts the
        placements near it better. On FLUX.2-klein at 8 GiB (H200, benchmarks/results/2026-11-29-h200-klein)
        the start's reading over-counted every doubles-resident placement by 0.22 GiB and the candidate it
        allowed still left 1.6 GiB of the card free. Where the new reading leaves more room, the fastest
        placement predicted from the candidate's own traces is measured next."""
        reading = self._list_reading(cal, cal.placement)
        m, others = reading.memory, reading.memory.others_bytes
        logger().info("[autoperf] memory at %s: this process peaked at %s (the start's reading said %s); %s can hold "
                      "resident layers and prefetch buffers", cal.placement.label(), gib(m.measured_peak_bytes - others, 2),
                      gib(cal.memory.peak_of(reading.lists, reading.placement) - others, 2), gib(m.placeable_bytes, 2))
        new = [p for p in self._free_knobs_only(self._list_candidates(cal, reading, 1), cal.baseline)
               if p not in cal.trials]
        if not new:
            logger().info("[autoperf] no placement predicted faster than %s fits that", cal.placement.label())
            return
        cal.memory = m
        cal.trials[cal.trial + 1:cal.trial + 1] = new
        self._fit_pending_trials(cal, keep=new)

    def _fit_pending_trials(self, cal: Calibration, keep: list) -> None:
        """In a warmup request, the trials still to run fit its steps left: the last of the first
        round's candidates go first (they were predicted slowest), the closing baseline stays."""
        if not cal.step_mode or self.request is None:
            return
        left = self._steps_left(cal)
        pending = cal.trials[cal.trial + 1:]
        while len(pending) * STEPS_PER_TRIAL > left:
            drop = next((i for i in range(len(pending) - 2, -1, -1) if pending[i] not in keep), None)
            if drop is None:
                break
            del pending[drop]
        cal.trials[cal.trial + 1:] = pending

    def others_bytes(self, total: int) -> int:
        """What other processes held on a card of `total` bytes when the plan was made (0 where unknown)."""
        free_at_start = self._free_at_start()
        return max(0, total - int(free_at_start)) if free_at_start else 0

    def memory_limit_bytes(self, total: int) -> int:
        """The real limit, in the frame of the card's whole use (other processes included): the
        card, or what other processes held when the plan was made plus the user's budget."""
        budget = getattr(self.plan, "budget_bytes", None)
        if not budget or not self._free_at_start():
            return total
        return min(total, self.others_bytes(total) + int(budget))

    def predicted_peak_bytes(self, total: int) -> int:
        """The startup model's peak for the start placement, in the same frame as the limit."""
        predicted = int(((getattr(self.plan, "plan", None) or {}).get("predicted") or {}).get("vram_bytes") or 0)
        return predicted + self.others_bytes(total)

    def _rollback(self, cal: Calibration, exc: BaseException) -> None:
        import torch

        bad = cal.placement
        cal.failed[bad] = f"{type(exc).__name__}"
        cal.measured[bad] = []
        what = "ran out of memory" if is_oom(exc) else f"failed ({type(exc).__name__}: {str(exc)[:200]})"
        logger().warning("[autoperf] %s %s; rolled back to %s", bad.label(), what, cal.baseline.label())
        cal.trials = [p for p in cal.trials if p != bad] if bad != cal.baseline else cal.trials
        cal.trial = 0
        cal.done = True
        self.apply(cal.baseline)
        torch.cuda.empty_cache()

    def _finish(self, cal: Calibration) -> None:
        self.calibration = None
        self.monitor.detach()  # served steps run without our per-layer hooks (a sampled step attaches its own)
        measured = {p: _agree_on_times(cal.measured.get(p, [])) for p in cal.trials}
        vram = {p: max((t.peak_allocated_bytes for t in cal.traces.get(p, [])), default=0) for p in cal.trials}
        if not measured.get(cal.baseline):
            logger().info("[autoperf] calibration of %s measured no baseline steps; nothing changed", cal.bucket)
            return
        decision = decide(cal.baseline, measured, vram, cal.objective)
        if decision.placement != self.placement():
            self.apply(decision.placement)
        before = cal.traces[cal.baseline]
        result = self._result(cal, decision, vram)
        self.results[cal.bucket] = result
        if self.identity["rank"] == 0:
            self.cache.put(self.key(cal.bucket, cal.batch_size), result)
        logger().info(
            "[autoperf] calibration of %s: %s %s (%s)%s",
            cal.bucket, "switched to" if decision.kept_new else "kept", decision.placement.label(), decision.reason,
            f" [rank {self.identity['rank']} of {_dist_world().get_world_size()}]" if _dist_world() else "",
        )
        for line in format_calibration_table(result).splitlines():
            logger().info("%s", line if line.startswith("[autoperf]") else f"[autoperf] {line}")
        if isinstance(decision.placement, Placement):
            lists = layer_lists(before)
            note = all_resident_note(decision.placement, measured, lists[0][2] if lists else 0, cal.objective,
                                     self.plan.budget_bytes is not None)
            if note:
                logger().info("[autoperf] %s", note)

    def _result(self, cal: Calibration, decision, vram: dict) -> TuningResult:
        """The calibration as it is cached: per list too where the DiT has several lists, with the
        memory measured at the start (the next start applies it without measuring)."""
        before = cal.traces[cal.baseline]
        result = TuningResult.from_calibration(
            placement=_first_list(decision.placement), baseline=_first_list(cal.baseline), objective=cal.objective,
            reason=decision.reason, stats=decision.stats, calibration_s=self.clock() - cal.started,
            steps_used=cal.steps_used, before=before, after=cal.traces.get(decision.placement) or before,
            vram_bytes=vram.get(decision.placement, 0), baseline_vram_bytes=vram.get(cal.baseline),
        )
        if isinstance(decision.placement, ListPlacement):
            result.set_lists(decision.placement, cal.baseline, cal.memory.to_dict() if cal.memory is not None else None)
        return result


@dataclass(frozen=True)
class _ListReading:
    """One memory reading of a per-list calibration: the traced steps it came from and what it allows."""

    steps: list
    layer_bytes: list[int]  # the traced lists' blocks, list after list
    lists: list[LayerList]
    traced: list[str]  # the list keys the steps ran
    placement: ListPlacement  # the measured placement, traced lists only
    memory: MemoryCorrection
    staging: int  # compressed streaming's staging buffer, kept free with the margin


def _calibrated_order(lists: list[LayerList], placement: ListPlacement) -> list[str]:
    """The order a calibration gave residency in (retune/lists.residency_order), read back from its
    choice: the list it made most resident, as a share of its blocks, first."""
    counts = {ll.key: ll.count for ll in lists}
    return sorted(counts, key=lambda k: -placement.get(k).resident_layers / counts[k])


def _keeping(p, baseline, fixed: frozenset):
    """`p` with the pinned knobs at `baseline`'s values, list by list where there are several."""
    if isinstance(p, Placement):
        return p.keeping(baseline, fixed)
    return ListPlacement(tuple((key, q.keeping(baseline.get(key), fixed)) for key, q in p.lists))


def _memory_reading(steps: list[StepTrace]) -> MemoryReading:
    """The peak of the traced steps: the allocator's reserved and allocated peaks, and the use
    outside the allocator (context, workspaces, other processes) after the last step."""
    last = steps[-1]
    return MemoryReading(reserved_peak_bytes=max(s.peak_reserved_bytes for s in steps),
                         allocated_peak_bytes=max(s.peak_allocated_bytes for s in steps),
                         non_allocator_bytes=max(0, last.device_used_bytes - last.reserved_bytes))


def _device_total_bytes() -> int:
    import torch

    return int(torch.cuda.mem_get_info()[1])


def _first_list(placement: "Placement | ListPlacement") -> Placement:
    """A step trace names one Placement: the first list's where there are several (the lists'
    own placements are in the calibration and the tuning result)."""
    return placement if isinstance(placement, Placement) else placement.lists[0][1]


def _quietly(fn) -> None:
    """For cleanup on a path where sglang's own error (or ours, already logged) is what matters."""
    try:
        fn()
    except Exception:
        pass


def _dist_world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _agree_on_placements(placements: list[Placement]) -> list[Placement]:
    """Every rank tries the same candidates: rank 0's proposal wins."""
    dist = _dist_world()
    if dist is None:
        return placements
    box = [placements]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree_any(flag: bool) -> bool:
    """True on every rank if it is true on any (a MAX over ranks)."""
    return _agree_on_times([1.0 if flag else 0.0])[0] > 0


def _agree_on_times(times: list[float]) -> list[float]:
    """A placement is as fast as its slowest rank: element-wise max over ranks."""
    dist = _dist_world()
    if dist is None or not times:
        return times
    import torch

    # NCCL (sglang's GPU workers) reduces device tensors only; gloo (CPU groups) host tensors
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(x) for x in t.tolist()]


# ---------------------------------------------------------------------------- hooks


def _guarded_around(what: str, begin, end, give_up, original, *args, **kwargs):
    """sglang's `original(*args, **kwargs)` with our `begin()` before it and `end(token)` after it.
    A failure of ours in either calls `give_up(what, exc)` (which steps aside) and never stops the
    call itself: sglang's own work always runs, once."""
    try:
        token = begin()
    except Exception as exc:
        give_up(f"{what} start", exc)
        return original(*args, **kwargs)
    result = original(*args, **kwargs)
    try:
        end(token)
    except Exception as exc:
        give_up(f"{what} end", exc)
    return result


def _restore_compiled(checker) -> None:
    """On our own failure, leave the DiT as sglang compiled it (a failure here too is only logged:
    the request goes on)."""
    try:
        if checker.switch:
            checker.switch.set(True)
    except Exception as exc:
        logger().debug("[autoperf] restoring the compiled DiT failed too: %s: %s", type(exc).__name__, exc)


class LiveRun:
    """What one worker process measures: a WorkerTuner (offloaded DiT), or a CompileChecker (a
    compile this plugin turned on), or nothing. sglang_adapter.binding owns the process's instance and
    registers its two `around_*` methods; after an error of ours, both are None for good."""

    def __init__(self) -> None:
        self.tuner: WorkerTuner | None = None
        self.compile_check: CompileChecker | None = None

    def install(self, tuner: "WorkerTuner") -> None:
        tuner.give_up = self.disable
        self.tuner = tuner

    def attach_worker(self, worker, plan, settings) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        managers = sa.offload_managers(sa.worker_pipeline(worker))
        if not managers:
            if self._attach_compile_check(worker, plan, settings):
                return
            logger().info("[autoperf] no layerwise-offloaded DiT in this worker: nothing to measure")
            return
        blocker = sa.managers_live_blocker(managers)
        if blocker:  # detected here, not by a placement change raising mid-request
            logger().info("[autoperf] live retuning steps aside: %s; sglang's placement stands", blocker)
            return
        self.install(WorkerTuner.for_worker(worker, plan, settings, managers))
        try:
            self.tuner.compression = attach_compression(managers, plan, settings)
        except Exception as exc:  # sglang's raw host buffers are untouched until a commit
            logger().info("[autoperf] compressed streaming not tried: %s: %s", type(exc).__name__, str(exc)[:200])
        logger().info(
            "[autoperf] overlap monitor ready for %s (%s); its layer hooks run only while calibrating or tracing",
            ", ".join(f"{name} ({len(group)} layer list(s))" for name, group in managers.items()),
            self.tuner.placement().label(),
        )

    def _attach_compile_check(self, worker, plan, settings) -> bool:
        """Measure torch.compile where this plugin turned it on (never where the user pinned it)."""
        planned = any(c.get("setting") == "enable_torch_compile" and c.get("after") is True for c in plan.changes)
        if not planned:
            return False
        identity = sa.worker_identity(worker.server_args, rank=sa.worker_rank(worker))
        self.compile_check = CompileChecker(
            lambda: sa.CompileSwitch(sa.compiled_dit_modules(sa.worker_pipeline(worker))),
            lambda bucket, batch_size: worker_tuning_key(plan, identity, bucket, batch_size, COMPILE_OBJECTIVE,
                                                         settings.vram_budget),
            TuningCache(settings.cache_dir), rank=identity["rank"], agree=_agree_on_times,
        )
        logger().info("[autoperf] torch.compile check attached: per shape, one request compiled and one eager; "
                      "the faster stays")
        return True

    # -- sglang's hooks ------------------------------------------------------------------------

    def around_denoising_loop(self, original, stage, ctx, batch, *args, **kwargs):
        tuner = self.tuner
        if tuner is None:
            if self.compile_check is not None:
                return self._compile_loop(original, stage, ctx, batch, *args, **kwargs)
            return original(stage, ctx, batch, *args, **kwargs)

        def begin():
            tuner.settings.maybe_fail("measure")
            tuner.begin_request(sa.request_shape(ctx, batch))

        return _guarded_around("request", begin, lambda _: tuner.end_request(), self.disable,
                               original, stage, ctx, batch, *args, **kwargs)

    def around_denoising_step(self, original, *args, **kwargs):
        tuner, checker = self.tuner, self.compile_check
        if tuner is None and checker is not None and checker.request is not None:
            return _guarded_around("step", checker.begin_step, checker.end_step, self.drop_compile_check,
                                   original, *args, **kwargs)
        if tuner is None or (tuner.calibration is None and not tuner.settings.trace_dir
                             and not tuner.measuring_compression()):
            return original(*args, **kwargs)
        return tuner.run_step(original, args, kwargs)

    def _compile_loop(self, original, stage, ctx, batch, *args, **kwargs):
        checker = self.compile_check

        def begin():
            shape = sa.request_shape(ctx, batch)
            checker.begin_request(shape, request_bucket(shape))

        return _guarded_around("request", begin, lambda _: checker.end_request(), self.drop_compile_check,
                               original, stage, ctx, batch, *args, **kwargs)

    # -- stepping aside --------------------------------------------------------------------------

    def disable(self, what: str, exc: BaseException) -> None:
        """An error of ours: restore the placement sglang started with, stop measuring, say so in
        one line. Nothing here raises: the request goes on with sglang's settings."""
        tuner, self.tuner = self.tuner, None
        note = ""
        if tuner is not None:
            try:
                tuner.monitor.detach()
                if tuner.compression is not None and not tuner.compression.streaming.decided:
                    tuner.compression.commit(False, "live tuning stepped aside")
                if tuner.calibration is not None and tuner.placement() != tuner.calibration.baseline:
                    tuner.apply(tuner.calibration.baseline)
            except Exception as restore_exc:
                note = (f"; restoring the start placement failed too ({type(restore_exc).__name__}: "
                        f"{str(restore_exc)[:200]})")
        step_aside(f"live tuning ({what})", exc, note)

    def drop_compile_check(self, what: str, exc: BaseException) -> None:
        """The torch.compile check's own failure: leave the DiT as sglang compiled it, stop checking."""
        checker, self.compile_check = self.compile_check, None
        if checker is not None:
            _restore_compiled(checker)
        step_aside(f"torch.compile check ({what})", exc)
