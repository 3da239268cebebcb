"""The plugin's logger: at the bottom of the import graph, so every stage can log without
importing the entry point (plugin.py) that sits above them all."""
from __future__ import annotations

import logging

# sglang's logging set-up formats and routes everything under the "sglang" namespace; a child
# logger there shows our lines in the same stream, with sglang's own prefix.
LOGGER_NAME = "sglang.autoperf"


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def step_aside(what: str, exc: BaseException, note: str = "") -> None:
    """The one WARNING line for a failure of ours (the traceback only at DEBUG); the caller has
    left, or put back, sglang's own settings."""
    import traceback

    logger().warning(
        "[autoperf] %s failed (%s: %s)%s; sglang's own settings are in effect",
        what,
        type(exc).__name__,
        str(exc).splitlines()[0][:300] if str(exc) else "",
        note,
    )
    logger().debug("[autoperf] %s", "".join(traceback.format_exception(exc)))
