"""Byte units and the one way a byte count is written for people."""
from __future__ import annotations

GiB = 1024**3


def gib(n: float | None, digits: int = 1, *, unit: bool = True, signed: bool = False, missing: str = "?") -> str:
    """`n` bytes in GiB: gib(25769803776) == "24.0 GiB"; `unit=False` for tables whose header says
    GiB; `signed` for differences; `missing` where the count is unknown (None)."""
    if n is None:
        return missing
    text = f"{n / GiB:{'+' if signed else ''}.{digits}f}"
    return f"{text} GiB" if unit else text
