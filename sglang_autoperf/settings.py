"""The plugin's own environment variables, parsed once, strictly.

A value we do not understand is an error that turns the plugin off (never a guess): the user
set the variable for a reason and deserves to be told it had no effect.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_ENABLE = "SGLANG_AUTOPERF"
ENV_LOSSY = "SGLANG_AUTOPERF_LOSSY"
# Let the plan turn torch.compile on (then checked per shape: kept only if measured faster). Off by
# default: sglang's max-autotune compile stalls a shape's first request for minutes.
ENV_COMPILE = "SGLANG_AUTOPERF_COMPILE"
ENV_VRAM_BUDGET = "SGLANG_AUTOPERF_VRAM_BUDGET"
ENV_CACHE_DIR = "SGLANG_AUTOPERF_CACHE_DIR"
ENV_CALIBRATE = "SGLANG_AUTOPERF_CALIBRATE"
# Record every denoising step's per-layer trace as JSON in this folder (benchmarks, fixtures).
ENV_TRACE_DIR = "SGLANG_AUTOPERF_TRACE_DIR"
# With a trace dir: trace one step in N (default 1: every step). N=2 alternates traced and untraced
# steps within a request, which is how the monitor's own overhead is measured (benchmarks).
ENV_TRACE_EVERY = "SGLANG_AUTOPERF_TRACE_EVERY"
# Compressed layer streaming (lossless, issue 18): unset = measured where the plan predicts it
# pays; 0/off = never; 1/on = always where the decoder runs (no A/B measurement).
ENV_COMPRESS = "SGLANG_AUTOPERF_COMPRESS"
COMPRESS_MODES = ("auto", "off", "on")
# Test-only: names a stage ("apply", "worker", "measure") that raises on purpose, so tests can
# prove an internal failure never breaks the user's run.
ENV_FAIL_AT = "SGLANG_AUTOPERF_FAIL_AT"

_ON = ("1", "true", "on", "yes")
_OFF = ("", "0", "false", "off", "no")
FAIL_STAGES = ("apply", "worker", "measure")


class SettingsError(ValueError):
    """An environment variable of ours holds a value we do not accept."""


def parse_switch(name: str, value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise SettingsError(
        f"{name}={value!r} is not understood; accepted: "
        f"{'/'.join(v for v in _ON)} to enable, unset/empty/{'/'.join(v for v in _OFF if v)} to disable"
    )


def parse_compress(value: str | None) -> str:
    text = (value or "").strip().lower()
    if text in ("", "auto"):
        return "auto"
    try:
        return "on" if parse_switch(ENV_COMPRESS, text) else "off"
    except SettingsError:
        raise SettingsError(f"{ENV_COMPRESS}={value!r} is not understood; accepted: unset/auto (measure where "
                            f"it pays), 0/off, 1/on") from None


def default_cache_dir(env: dict[str, str] | os._Environ = os.environ) -> Path:
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR]).expanduser()
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sglang-autoperf"


def _check_budget_syntax(text: str) -> None:
    """Reject a malformed budget at startup, in every process, before anything is planned."""
    from sglang_autoperf.plan.budget import BudgetError, parse_vram_budget

    try:
        parse_vram_budget(text, free_bytes=1 << 40)  # the amount only matters for fractions
    except BudgetError as exc:
        raise SettingsError(f"{ENV_VRAM_BUDGET}={text!r}: {exc}") from None


def _parse_trace_every(value: str | None) -> int:
    text = (value or "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise SettingsError(f"{ENV_TRACE_EVERY}={value!r} is not a whole number >= 1")
    return int(text)


@dataclass(frozen=True)
class Settings:
    enabled: bool
    lossy: bool = False
    compile: bool = False
    vram_budget: str | None = None  # raw text; parsed against free memory by plan.budget
    cache_dir: str = ""
    calibrate: bool = True  # measure + retune live; off = plan at startup only
    trace_dir: str | None = None
    trace_every: int = 1
    fail_at: str | None = None
    compress: str = "auto"  # COMPRESS_MODES

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ = os.environ) -> "Settings":
        """Raises SettingsError for any value we do not accept (the caller turns the plugin off)."""
        enabled = parse_switch(ENV_ENABLE, env.get(ENV_ENABLE))
        if not enabled:
            return cls(enabled=False)
        lossy = parse_switch(ENV_LOSSY, env.get(ENV_LOSSY))
        allow_compile = parse_switch(ENV_COMPILE, env.get(ENV_COMPILE))
        calibrate = parse_switch(ENV_CALIBRATE, env.get(ENV_CALIBRATE, "1"))
        budget = (env.get(ENV_VRAM_BUDGET) or "").strip() or None
        if budget is not None:
            _check_budget_syntax(budget)
        fail_at = (env.get(ENV_FAIL_AT) or "").strip() or None
        if fail_at is not None and fail_at not in FAIL_STAGES:
            raise SettingsError(f"{ENV_FAIL_AT}={fail_at!r} is not one of {', '.join(FAIL_STAGES)}")
        trace_every = _parse_trace_every(env.get(ENV_TRACE_EVERY))
        return cls(
            enabled=True,
            lossy=lossy,
            compile=allow_compile,
            vram_budget=budget,
            cache_dir=str(default_cache_dir(env)),
            calibrate=calibrate,
            fail_at=fail_at,
            trace_dir=(env.get(ENV_TRACE_DIR) or "").strip() or None,
            trace_every=trace_every,
            compress=parse_compress(env.get(ENV_COMPRESS)),
        )

    def traces_step(self, step: int, request_index: int) -> bool:
        """Whether a step outside calibration is traced: step 0 never (it holds autotuning);
        with N > 1, the traced phase shifts by one each request so no step index is always traced."""
        if not self.trace_dir or step <= 0:
            return False
        return (step + request_index) % self.trace_every == 0

    def maybe_fail(self, stage: str) -> None:
        if self.fail_at == stage:
            raise RuntimeError(f"forced failure at stage {stage!r} ({ENV_FAIL_AT})")
