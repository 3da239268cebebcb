"""sglang's plugin entry point (group ``sglang.multimodal_gen.plugins``, name ``autoperf``).

sglang calls `register()` in every process it starts (main, each GPU worker, the HTTP child), so
it only decides whether to be active and registers hooks: no CUDA, no NVML, no model reading.
"""
from __future__ import annotations

import logging
import os
from importlib import metadata

from sglang_autoperf import SUPPORTED_SGLANG
from sglang_autoperf.settings import ENV_ENABLE, Settings, SettingsError

# Set once a "plugin off" line was logged, so that child processes (which inherit the
# environment and load the plugin again) do not repeat it.
_ANNOUNCED_ENV = "_SGLANG_AUTOPERF_ANNOUNCED"


def logger() -> logging.Logger:
    # sglang's logging setup formats and routes everything under the "sglang" namespace; a
    # child logger there shows our lines in the same stream, with sglang's own prefix.
    return logging.getLogger("sglang.autoperf")


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


def unsupported_sglang_reason(installed: str | None = None) -> str | None:
    """Why the installed sglang is one we must not touch, or None if it is supported."""
    if installed is None:
        try:
            installed = metadata.version("sglang")
        except metadata.PackageNotFoundError:
            return "sglang is not installed"
    low, high = SUPPORTED_SGLANG
    if not (low <= _version_tuple(installed) < high):
        supported = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        return f"sglang {installed} is outside the supported range {supported}"
    return None


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
    from sglang_autoperf import sglang_adapter

    sglang_adapter.register_hooks(settings)


__all__ = ["register", "unsupported_sglang_reason", "ENV_ENABLE"]
