"""Parse a VRAM budget given by the user (e.g. SGLANG_AUTOPERF_VRAM_BUDGET)."""
from __future__ import annotations

import re

_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,  # nvidia-smi / torch habit: binary
}
_ACCEPTED = "an amount such as '24GiB', '24000MiB' or '24GB', or a fraction of free memory in (0, 1] such as '0.5'"
_MAX_BYTES = 2**50  # 1 PiB: beyond any GPU, so a typo rather than a budget
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


class BudgetError(ValueError):
    """A budget string that cannot be read; the message names it and the accepted forms."""


def parse_vram_budget(text: str, free_bytes: int) -> int:
    """Bytes the plan may use on each GPU. A bare number is a fraction of `free_bytes`."""
    if not isinstance(text, str):
        raise BudgetError(f"VRAM budget {text!r} is not a string; expected {_ACCEPTED}")
    m = _PATTERN.match(text)
    if not m:
        raise BudgetError(f"VRAM budget {text!r} is not understood; expected {_ACCEPTED}")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        if not 0.0 < number <= 1.0:
            raise BudgetError(
                f"VRAM budget {text!r}: a bare number is a fraction of free memory and must be "
                f"in (0, 1]; expected {_ACCEPTED}")
        value = int(number * free_bytes)
        if value <= 0:  # 0 would read as "no budget"
            raise BudgetError(f"VRAM budget {text!r} of {free_bytes} free bytes rounds to 0 bytes; "
                              f"expected {_ACCEPTED}")
        return value
    if unit not in _UNITS:
        raise BudgetError(f"VRAM budget {text!r} has unknown unit {m.group(2)!r}; expected {_ACCEPTED}")
    amount = number * _UNITS[unit]
    if not amount <= _MAX_BYTES:  # also inf: a 310-digit number is a float overflow
        raise BudgetError(f"VRAM budget {text!r} is over 1 PiB, more than any GPU has; expected {_ACCEPTED}")
    value = int(amount)
    if value <= 0:
        raise BudgetError(f"VRAM budget {text!r} must be positive; expected {_ACCEPTED}")
    return value
