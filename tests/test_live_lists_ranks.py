"""Two ranks of one per-list calibration (a gloo world of 2 CPU processes, as sglang's workers form
one with NCCL on GPUs): every collective the tuner makes is made by both ranks, or the run hangs. Rank 1
measures the first candidate slower than the start, so its own view says no second memory reading is
due while rank 0's says one is: both must take it, try the same placements and keep the same one."""
from __future__ import annotations

import json
import os
import socket
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.multiprocessing as mp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    sys.path.insert(0, HERE)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        import test_live_lists as t

        tuner = t._tuner(os.path.join(out_dir, f"cache{rank}"), overcount_bytes=t.GiB // 2)
        if rank == 1:  # every placement but the start 40% slower here
            resolve = tuner.monitor.resolve

            def slower(pending):
                trace = resolve(pending)
                return trace if pending[1] == tuner.monitor.start else t.replace(trace, wall_ms=trace.wall_ms * 1.4)
            tuner.monitor.resolve = slower
        t._warmup(tuner)
        [result] = tuner.results.values()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"tried": [p.label() for p in dict.fromkeys(tuner.monitor.order)],
                       "chosen": result.chosen().label()}, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_agree_on_the_second_reading_and_the_choice(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank waited in a collective the other never made"
    assert all(p.exitcode == 0 for p in procs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert len(ranks[0]["tried"]) > 2  # the start, the first candidates and the second reading's candidate
