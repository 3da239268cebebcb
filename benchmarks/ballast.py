"""Emulate a smaller GPU: hold device memory in this process so that only --free-gib stays free.

    python3 benchmarks/ballast.py --free-gib 24 --ready-file /tmp/ballast.json [--device 0] [--parent-pid PID]

"Free" is what cudaMemGetInfo reports, i.e. what the next process sees before creating its own
CUDA context (that context, ~0.5 GiB, comes out of the free amount). Once the target is reached the
process writes a JSON line {held_gib, free_gib, total_gib, pid} to --ready-file and sleeps until it
is terminated — or, with --parent-pid, until that process is gone (so a killed benchmark never
leaves the card half full for the next one).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

CHUNK = 2 * 2**20  # allocations are rounded down to 2 MiB
MAX_BLOCK = 8 * 2**30


def hold(free_target: int, device: int):
    import torch

    torch.cuda.set_device(device)
    torch.empty(1, device="cuda")  # create the context first, so its memory is accounted for
    blocks = []
    for _ in range(512):
        free, _total = torch.cuda.mem_get_info()
        need = free - free_target
        if need < 16 * 2**20:
            break
        size = min(need, MAX_BLOCK) // CHUNK * CHUNK
        try:
            blocks.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            break  # fragmentation or a racing process: keep what we have
    free, total = torch.cuda.mem_get_info()
    held = sum(b.numel() for b in blocks)
    return blocks, {"held_gib": round(held / 2**30, 2), "free_gib": round(free / 2**30, 2),
                    "total_gib": round(total / 2**30, 2), "target_free_gib": round(free_target / 2**30, 2),
                    "device": device, "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--free-gib", type=float, required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--parent-pid", type=int, default=None)
    a = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _blocks, info = hold(int(a.free_gib * 2**30), a.device)
    print(f"[ballast] {json.dumps(info)}", flush=True)
    if info["free_gib"] > a.free_gib + 0.5:
        print(f"[ballast] warning: {info['free_gib']} GiB free, above the {a.free_gib} GiB target", flush=True)
    tmp = a.ready_file + ".partial"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, a.ready_file)
    while a.parent_pid is None or _alive(a.parent_pid):
        time.sleep(2)
    print("[ballast] parent gone, releasing", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
