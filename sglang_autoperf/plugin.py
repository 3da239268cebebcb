"""sglang's plugin entry point (group ``sglang.multimodal_gen.plugins``, name ``autoperf``).

sglang calls `register()` in every process it starts (main, each GPU worker, the HTTP child), so
it only decides whether to be active and registers hooks: no CUDA, no NVML, no model reading.
"""
from __future__ import annotations

import os
from importlib import metadata

from sglang_autoperf import SUPPORTED_SGLANG
from sglang_autoperf.log import logger
from sglang_autoperf.settings import ENV_ENABLE, Settings, SettingsError

# Set once a "plugin off" line was logged, so that child processes (which inherit the
# environment and load the plugin again) do not repeat it.
_ANNOUNCED_ENV = "_SGLANG_AUTOPERF_ANNOUNCED"


def _say_once(message: str) -> None:
    if os.environ.get(_ANNOUNCED_ENV):
        return
    os.environ[_ANNOUNCED_ENV] = "1"
    logger().warning("[autoperf] %s", message)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _installed_sglang() -> str | None:
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def unsupported_sglang_reason(installed: str | None = None) -> str | None:
    """Why the installed sglang is one we must not touch (not there, or older than any release the
    adapter knows), or None. A release newer than the tested range is decided by `newer_sglang_note`."""
    installed = installed if installed is not None else _installed_sglang()
    if installed is None:
        return "sglang is not installed"
    low, _high = SUPPORTED_SGLANG
    if _version_tuple(installed) < low:
        return f"sglang {installed} is older than {'.'.join(map(str, low))}, the oldest release this plugin knows"
    return None


def newer_sglang_note(installed: str, problems_of) -> tuple[bool, str | None]:
    """(run?, the one line to say) for a release at or above the tested range's end: it runs only
    if the adapter's contract self-check (`problems_of()`) finds nothing broken."""
    low, high = SUPPORTED_SGLANG
    if _version_tuple(installed) < high:
        return True, None
    tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    problems = problems_of()
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return False, (f"sglang {installed} is newer than the tested range {tested} and its contract self-check "
                       f"failed: {problems[0]}{more}; the plugin stays off and sglang's own settings are in effect")
    return True, (f"sglang {installed} is newer than the tested range {tested}; its contract self-check passed "
                  f"(hook targets, ServerArgs fields, the offload manager's attributes): running untested")


def register() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        _say_once(f"{exc}; the plugin stays off and sglang's own settings are in effect")
        return
    if not settings.enabled:
        return
    reason = unsupported_sglang_reason()
    if reason is not None:
        _say_once(f"{reason}; the plugin stays off and sglang's own settings are in effect")
        return
    from sglang_autoperf.sglang_adapter import binding as sglang_binding, contract as sglang_contract

    run, note = newer_sglang_note(_installed_sglang(), sglang_contract.contract_problems)
    if note:
        _say_once(note)
    if run:
        sglang_binding.register_hooks(settings)


__all__ = ["register", "unsupported_sglang_reason", "newer_sglang_note", "ENV_ENABLE"]
