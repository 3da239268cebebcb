"""torch.compile, measured: keep the compiled DiT only where it is faster at the served shape.

When the plan turned torch.compile on (a resident DiT, several requests expected), the first real
request of a shape runs compiled and the next one eager; the faster stays for that shape bucket
and is cached, so a later start with the same key skips compile altogether where eager won
(startup.py). Switching happens only between requests, never inside one. Warmup requests are not
measured: with compile and a warmup, sglang streams the DiT layer by layer during the warmup
(`offload_during_compile`), which is not what is served.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from sglang_autoperf.log import logger

COMPILED_SKIP_STEPS = 2  # step 0 compiles for a new shape; step 1 can still recompile or autotune
EAGER_SKIP_STEPS = 1  # eager step 0 holds kernel autotuning too
MIN_MEASURED_STEPS = 2


class NoCompiledModule(RuntimeError):
    """sglang did not compile the DiT (e.g. a pipeline that ignores --enable-torch-compile)."""


class CudaStepTimer:
    """Step times from CUDA events on the current stream; read once the request has finished."""

    def __init__(self):
        self._pending: list[tuple[int, Any, Any]] = []

    def start(self, step: int):
        import torch

        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        return (step, begin, end)

    def stop(self, token) -> None:
        token[2].record()
        self._pending.append(token)

    def read(self) -> dict[int, float]:
        pending, self._pending = self._pending, []
        if pending:
            pending[-1][2].synchronize()
        return {step: begin.elapsed_time(end) for step, begin, end in pending}


class CompileChecker:
    """Per shape bucket: one compiled request, one eager request, then the faster one, cached."""

    def __init__(self, find_switch: Callable[[], Any], key_for: Callable[[str, int], Any], cache, *, rank: int = 0,
                 timer_factory: Callable[[], Any] = CudaStepTimer,
                 agree: Callable[[list[float]], list[float]] = lambda times: times):
        self.find_switch = find_switch  # -> sglang_contract.CompileSwitch; sglang compiles at the first request
        self.switch = None
        self.key_for = key_for  # (bucket, batch_size) -> TuningKey with objective "compile"
        self.cache = cache
        self.rank = rank
        self.timer_factory = timer_factory
        self.agree = agree  # ranks must take the same decision: element-wise max over ranks
        self.results: dict[str, Any] = {}  # bucket -> TuningResult (compiled True/False)
        self.trials: dict[str, dict[str, Any]] = {}
        self.request: dict[str, Any] | None = None
        self.timer = None

    def begin_request(self, shape: dict[str, Any], bucket: str) -> None:
        self.request = None
        if shape["is_warmup"]:
            return
        if self.switch is None:
            switch = self.find_switch()
            if not switch:
                raise NoCompiledModule("torch.compile is on but no compiled DiT module was found")
            self.switch = switch
        result = self.results.get(bucket)
        if result is None:
            result = self.cache.get(self.key_for(bucket, shape["batch_size"]))
            if result is not None and result.compiled is not None:
                self.results[bucket] = result
                logger().info("[autoperf] torch.compile check for %s from the cache: %s", bucket,
                              "compiled" if result.compiled else "eager")
        if result is not None and result.compiled is not None:
            self.switch.set(result.compiled)
            return
        trial = self.trials.get(bucket)
        if trial is None:
            trial = self.trials[bucket] = {"phase": "compiled", "compiled": [], "eager": [],
                                           "started": time.perf_counter(), "steps": 0,
                                           "batch_size": shape["batch_size"]}
            logger().info("[autoperf] checking torch.compile at %s: this request compiled, the next eager; "
                          "the faster stays", bucket)
        self.switch.set(trial["phase"] == "compiled")
        self.request = {"bucket": bucket, "phase": trial["phase"], "step": 0}
        self.timer = self.timer_factory()

    def begin_step(self):
        """Start timing a step of the current request (None outside one)."""
        return None if self.request is None else self.timer.start(self.request["step"])

    def end_step(self, token) -> None:
        if self.request is None or token is None:
            return
        self.timer.stop(token)
        self.request["step"] += 1

    def run_step(self, original, args, kwargs):
        token = self.begin_step()
        result = original(*args, **kwargs)
        self.end_step(token)
        return result

    def end_request(self) -> None:
        request, self.request = self.request, None
        if request is None:
            return
        trial = self.trials[request["bucket"]]
        phase = request["phase"]
        skip = COMPILED_SKIP_STEPS if phase == "compiled" else EAGER_SKIP_STEPS
        times = self.agree([ms for step, ms in sorted(self.timer.read().items()) if step >= skip])
        trial[phase].extend(times)
        trial["steps"] += request["step"]
        if len(trial[phase]) < MIN_MEASURED_STEPS:
            return  # the same phase again with the next request of this shape
        if phase == "compiled":
            trial["phase"] = "eager"
            return
        self._finish(request["bucket"], trial)

    def _finish(self, bucket: str, trial: dict[str, Any]) -> None:
        from sglang_autoperf.cache import COMPILE_OBJECTIVE, RESIDENT_DIT, TuningResult
        from sglang_autoperf.retune.retuner import decide_compile

        decision = decide_compile(trial["compiled"], trial["eager"])
        self.switch.set(decision.keep_compiled)
        result = TuningResult(
            placement=RESIDENT_DIT, objective=COMPILE_OBJECTIVE, baseline=RESIDENT_DIT,
            stats=decision.stats, reason=decision.reason,
            calibration_s=time.perf_counter() - trial["started"], steps_used=trial["steps"],
            compiled=decision.keep_compiled,
        )
        self.results[bucket] = result
        del self.trials[bucket]
        if self.rank == 0:
            self.cache.put(self.key_for(bucket, trial["batch_size"]), result)
        logger().info("[autoperf] torch.compile check of %s: %s", bucket, decision.reason)
