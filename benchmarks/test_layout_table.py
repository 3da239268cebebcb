"""CPU tests of the layout benchmark (issue 20): the table from hand-written arm records, and a whole
layout_bench.sh run on the CPU with stand-ins for what needs GPUs (nvidia-smi, the request runner),
planning from the recorded 2x H200 snapshot and the config-only Wan2.1-14B fixture.

    python3 -m pytest benchmarks/test_layout_table.py -q
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import layout_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAN14 = ROOT / "tests" / "fixtures" / "models" / "Wan2.1-T2V-14B-Diffusers"
SNAPSHOT = ROOT / "tests" / "fixtures" / "nvml" / "nvml-2x-h200-141gb-2026-11-27.json"


def rec(arm, label, step, sha="s1", autoperf=False):
    """An arm record as layout_bench.sh writes it (hand-written, gen_api.py's fields)."""
    return {"arm": arm, "label": label, "autoperf": autoperf, "rc": 0, "card": "NVIDIA H200",
            "server_args": {"num_gpus": 2}, "argv": ["--model-path", "/tmp/m"], "shape": "832x480x81f",
            "requests": [{"status": "ok", "steady_median_ms": step, "sha256": sha}]}


def test_table_best_spread_and_lossless():
    records = [rec("cfg2", "cfg2", s) for s in (100.0, 104.0, 102.0)]
    records += [rec("ulysses2", "ulysses2", s) for s in (110.0, 111.0, 109.0)]
    records += [rec("plugin", "cfg2", s, autoperf=True) for s in (103.0, 101.0, 103.5)]
    records += [rec("plugin-pinned", "cfg2", 102.0, sha="other", autoperf=True)]
    records += [{"arm": "cfg2+fsdp", "label": "cfg2+fsdp", "autoperf": False, "rc": 1, "error": "OOM", "requests": []}]
    arms = layout_table.summarise(records)
    text, best = layout_table.markdown(arms, {"cfg2": 95.0, "ulysses2": 99.0})
    assert best == "cfg2"
    assert arms["cfg2"]["median"] == 102.0 and (arms["cfg2"]["lo"], arms["cfg2"]["hi"]) == (100.0, 104.0)
    assert "plugin: 103.0 ms, inside the best's spread" in text
    assert "plugin vs cfg2 (same layout): bit-identical" in text
    assert "plugin-pinned vs cfg2 (same layout): OUTPUTS DIFFER" in text
    row = next(line for line in text.splitlines() if line.startswith("| ulysses2 "))
    assert "| no |" in row and "1.078" in row  # 110 / 102
    assert "failed: OOM" in text
    assert layout_table.winner_record(records, arms, best)["layout"] == "cfg2"
    assert "<rect" in layout_table.svg_bars(arms)


FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-a)"; echo "GPU 1: NVIDIA H200 (UUID: GPU-b)" ;;
  --query-gpu=name*) echo "NVIDIA H200"; echo "NVIDIA H200" ;;
  *) echo "stand-in nvidia-smi" ;;
esac
"""

# Stands in for gen_api.py: records the server args it was given; CFG-parallel is the fastest.
FAKE_GEN = textwrap.dedent("""
    import argparse, json
    ap = argparse.ArgumentParser()
    for a in ("--model-path", "--out", "--width", "--height", "--frames", "--steps", "--requests",
              "--server-args", "--master-port"):
        ap.add_argument(a)
    args = ap.parse_args()
    sa = json.loads(args.server_args)
    step = 100.0 if sa.get("cfg_parallel_degree", 2) == 2 else 120.0
    json.dump({"argv": ["--model-path", args.model_path], "server_args": sa, "card": "stand-in",
               "requests": [{"status": "ok", "steady_median_ms": step, "sha256": "same"}]}, open(args.out, "w"))
""")


def test_layout_bench_runs_every_arm_alternated(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    (tmp_path / "gen.py").write_text(FAKE_GEN)
    model = tmp_path / "Wan2.1-T2V-14B-Diffusers"
    shutil.copytree(WAN14, model)
    (model / "_source.json").write_text("{}")
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out), R=str(tmp_path / "r"),
               MODEL=str(model), GEN=str(tmp_path / "gen.py"), GPU_SNAPSHOT=str(SNAPSHOT), ARM_EST_S="1",
               BUDGET_S="3000", PY=sys.executable)
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "layout_bench.sh")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "arms.jsonl").read_text().splitlines()]
    arms = sorted({r["arm"] for r in lines})
    # torch_sdpa: no ring; 6 layouts (cfg2, ulysses2, kvgather2, each with and without FSDP) + 3 arms
    assert arms == sorted(["cfg2", "cfg2+fsdp", "ulysses2", "ulysses2+fsdp", "kvgather2", "kvgather2+fsdp",
                           "sglang-default", "plugin", "plugin-pinned"])
    assert all(sum(r["arm"] == a for r in lines) == 3 for a in arms)  # 3 processes each
    firsts = [next(r["arm"] for r in lines if r["round"] == k) for k in (1, 2, 3)]
    assert len(set(firsts)) == 3  # each round starts with another arm
    pinned = next(r for r in lines if r["arm"] == "plugin-pinned")
    assert pinned["label"] == "cfg2" and pinned["server_args"]["cfg_parallel_degree"] == 2
    free = next(r for r in lines if r["arm"] == "plugin")["server_args"]
    assert not {"cfg_parallel_degree", "ulysses_degree", "ring_degree", "kv_gather_degree",
                "use_fsdp_inference"} & set(free)  # the plugin's own choice: no layout flag pinned
    table = (out / "table.md").read_text()
    assert "plugin vs cfg2 (same layout): bit-identical" in table
    assert json.loads((out / "winner.json").read_text())["layout"] in ("cfg2", "cfg2+fsdp")
    assert set(json.loads((out / "predicted.json").read_text())) >= {"cfg2", "ulysses2", "kvgather2"}
