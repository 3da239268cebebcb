"""Fast CPU tests of the benchmark scripts' parsing, failure classification and tables.

The perf dump and log excerpts below are HAND-WRITTEN from the documented formats (sglang 0.5.23
`--perf-dump-path`: steps[] name/duration_ms, denoise_steps_ms[] step/duration_ms,
memory_checkpoints{}.peak_allocated_mb, total_duration_ms; log lines as sglang's source formats
them), not recorded from a real run.

    python3 -m pytest benchmarks/test_benchmarks_parsing.py -q
"""
from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402
import make_checkpoints  # noqa: E402
import report  # noqa: E402

# Hand-written in the documented format (not recorded).
PERF_DUMP = {
    "timestamp": "2026-11-27T12:00:00+00:00", "request_id": "hand-written", "commit_hash": None,
    "tag": "benchmark_dump", "total_duration_ms": 9876.5,
    "steps": [
        {"name": "TextEncodingStage", "duration_ms": 120.0},
        {"name": "DenoisingStage", "duration_ms": 8100.0},
        {"name": "DecodingStage", "duration_ms": 900.0},
    ],
    "denoise_steps_ms": [{"step": i, "duration_ms": d} for i, d in
                         enumerate([5200.0, 190.0, 160.0, 170.0, 150.0, 165.0, 155.0, 175.0])],
    "memory_checkpoints": {
        "after_text_encoding": {"allocated_mb": 100.0, "reserved_mb": 200.0, "peak_allocated_mb": 300.0,
                                "peak_reserved_mb": 400.0, "peak_host_anon_mb": 0.0},
        "after_denoising": {"allocated_mb": 2000.0, "reserved_mb": 3000.0, "peak_allocated_mb": 4096.0,
                            "peak_reserved_mb": 5000.0, "peak_host_anon_mb": 0.0},
    },
    "meta": {},
}

SERVER_ARGS = {"model_path": "/tmp/models/x", "dit_layerwise_offload": True, "dit_offload_prefetch_size": 2.0,
               "dit_layerwise_resident_layers": 10.0, "dit_layerwise_residency_policy": "leading",
               "dit_cpu_offload": False, "performance_mode": "auto", "attention_backend": "torch_sdpa",
               "prompt": "<redacted, len=5>"}

LOG_OK = textwrap.dedent(f"""\
    [11-27 12:00:00] server_args: {json.dumps(SERVER_ARGS)}
    [11-27 12:00:05] [autoperf] plan: resident_layers=24 prefetch=2 policy=leading predicted_step_ms=151.2
    [11-27 12:00:09] Loaded transformer: WanTransformer3DModel (sgl-diffusion version). model size: 2.64 GB, resident. avail GPU mem: 70.10 GB
    [11-27 12:00:09] Layerwise offload ready for transformer in 0.42s: groups=1, layers=30, prefetch/group=2, resident=24/30 (forward), policy=leading
    [11-27 12:00:20] [DenoisingStage] finished in 8.1 seconds
    """)


def test_steady_steps_drop_warmup():
    assert compare.steady_steps([9, 1, 2]) == [1, 2]  # < 8 steps: drop step 0 only
    assert compare.steady_steps(list(range(8))) == list(range(2, 8))  # >= 8: drop steps 0 and 1
    assert compare.steady_steps([5]) == []


def test_parse_perf_dump():
    p = compare.parse_perf_dump(PERF_DUMP)
    st = p["steady"]
    assert st["n"] == 6
    assert st["median_ms"] == pytest.approx(162.5)
    assert (st["min_ms"], st["max_ms"]) == (150.0, 175.0)
    assert st["iqr_ms"] > 0
    assert p["step0_ms"] == 5200.0
    assert p["denoise_stage_ms"] == 8100.0
    assert p["total_ms"] == 9876.5
    assert p["peak_allocated_mb"] == 4096.0


def test_parse_log_reads_back_settings():
    parsed = compare.parse_log(LOG_OK)
    assert parsed["server_args"]["dit_offload_prefetch_size"] == 2.0
    assert "prompt" not in parsed["server_args"]
    assert parsed["native_dit"] is True
    assert parsed["layerwise_offload"][0] == {"component": "transformer", "groups": 1, "layers": 30, "prefetch": [2],
                                              "resident": 24, "total": 30, "lifetime": "forward", "policy": "leading"}
    assert parsed["autoperf"]["resident_layers"] == 24
    assert parsed["autoperf"]["predicted_step_ms"] == 151.2
    eff = compare.effective_settings(parsed)
    # the offload-ready line (after the plugin ran) wins over server_args (logged before it)
    assert (eff["resident_layers"], eff["prefetch"], eff["policy"], eff["source"]) == (24, 2, "leading", "offload-log")


def test_effective_settings_without_offload():
    log = "server_args: " + json.dumps({**SERVER_ARGS, "dit_layerwise_offload": False}) + "\n"
    eff = compare.effective_settings(compare.parse_log(log))
    assert eff["layerwise_offload"] is False and eff["source"] == "server_args"


@pytest.mark.parametrize("rc,log,perf,timed_out,status", [
    (0, LOG_OK, "ok", False, "ok"),
    (0, LOG_OK + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n", None, False, "oom"),
    (0, "OOM detected. Possible solutions:\n", None, False, "oom"),
    (1, "Traceback (most recent call last):\nValueError: bad flag\n", None, False, "failed"),
    (0, "all quiet\n", None, False, "failed"),  # sglang exits 0 after a failed request
    (None, "", None, True, "timeout"),
    (0, "it is a roomy bloom\n", "ok", False, "ok"),  # no false OOM on words containing 'oom'
])
def test_classify(rc, log, perf, timed_out, status):
    p = compare.parse_perf_dump(PERF_DUMP) if perf == "ok" else None
    got, reason, _ = compare.classify(rc, log, p, timed_out, expected_steps=8)
    assert got == status
    assert (reason is None) == (status == "ok")


def test_classify_recovered_oom_is_ok_with_warning():
    p = compare.parse_perf_dump(PERF_DUMP)
    status, _, warnings = compare.classify(0, "RuntimeError: CUDA out of memory (retrying offloaded)\n", p, False, 8)
    assert status == "ok" and any("out of memory" in w for w in warnings)


def test_sweep_points_default_grid(tmp_path, monkeypatch):
    model = tmp_path / "Wan2.1-T2V-1.3B-Diffusers-random"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text(json.dumps({"num_layers": 30}))
    (model / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 30_000)
    monkeypatch.setitem(sys.modules, "sglang_autoperf.plan", None)  # planner not importable
    pts, why = compare.sweep_points(str(model), {}, free_gib=None, max_points=3)
    assert "default grid" in why and len(pts) == 3
    assert all(0 <= p.resident <= 30 for p in pts) and len(set(pts)) == 3
    assert "--dit-layerwise-resident-layers" in pts[0].flags()


def test_sweep_points_uses_planner_cost_model(tmp_path, monkeypatch):
    import types

    model = tmp_path / "m"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text(json.dumps({"num_layers": 19, "num_single_layers": 38}))
    fake = types.ModuleType("sglang_autoperf.plan.sweep")
    fake.predict_step_ms = lambda mp, wl, s, fb: None if s["resident"] > 40 else 500 - 8 * s["resident"] + s["prefetch"]
    monkeypatch.setitem(sys.modules, "sglang_autoperf.plan.sweep", fake)
    pts, why = compare.sweep_points(str(model), {}, free_gib=24, max_points=4)
    assert why.startswith("planner") and pts[0].resident <= 40 and len(pts) <= 4
    assert pts[0].resident == max(p.resident for p in pts)  # the predicted best comes first


def test_safetensors_writer_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors = pytest.importorskip("safetensors")
    a = torch.randn(3, 5, dtype=torch.bfloat16)
    b = torch.ones(7, dtype=torch.float32)
    path = str(tmp_path / "x.safetensors")
    make_checkpoints.write_safetensors(path, [("a", a), ("b", b)])
    with safetensors.safe_open(path, "pt") as f:
        assert torch.equal(f.get_tensor("a"), a) and torch.equal(f.get_tensor("b"), b)
    shards = make_checkpoints.plan_shards([("x", (10,)), ("y", (10,)), ("z", (30,))], 2, 40)
    assert [[n for n, _ in s] for s in shards] == [["x", "y"], ["z"]]


def _write_case(root, case, arms):
    os.makedirs(os.path.join(root, "runs"), exist_ok=True)
    summary = {"case": case, "card": {"name": "NVIDIA H100 80GB HBM3"}, "workload": {"width": 832, "height": 480,
               "frames": 17, "steps": 8, "seed": 0}, "budget": {"free_gib": None}, "dit_layers": 30,
               "arms": [{"arm": a["arm"]} for a in arms]}
    json.dump(summary, open(os.path.join(root, "summary.json"), "w"))
    for a in arms:
        json.dump(a, open(os.path.join(root, "runs", a["arm"] + ".json"), "w"))


def _arm(name, kind, autoperf, med, status="ok", resident=None, prefetch=2, offload=True, peak=4096.0):
    settings = ({"layerwise_offload": True, "resident_layers": resident, "total_layers": 30, "prefetch": prefetch,
                 "policy": "leading", "source": "offload-log"} if offload else
                {"layerwise_offload": False, "source": "server_args"})
    return {"arm": name, "arm_kind": kind, "autoperf": autoperf, "status": status, "settings": settings,
            "timings": None if status != "ok" else {"steady": {"median_ms": med, "min_ms": med - 5,
                                                               "max_ms": med + 5, "iqr_ms": 3.0, "n": 6},
                                                    "step0_ms": 5000.0, "denoise_stage_ms": 8000.0, "total_ms": 9000.0},
            "vram": {"peak_allocated_mb": peak}}


def test_report_tables(tmp_path):
    arms = [_arm("off", "off", False, 160.0, offload=False),
            _arm("off-forced", "explicit", False, 280.0, resident=0, prefetch=1),
            _arm("on-forced", "explicit", True, 165.0, resident=24),
            _arm("sweep-r24-p2", "sweep", False, 150.0, resident=24),
            _arm("sweep-r0-p2", "sweep", False, 170.0, resident=0),
            _arm("sweep-r28-p2", "sweep", False, None, status="oom", resident=28)]
    _write_case(str(tmp_path / "wan13b-17f"), "wan13b-17f", arms)
    cases = report.find_cases([str(tmp_path)])
    assert len(cases) == 1
    rows = report.comparisons(cases[0])
    assert [(x["on_arm"], x["off_arm"]) for x in rows] == [("on-forced", "off-forced"), ("on-forced", "off")]
    r = rows[0]
    assert (r["on_arm"], r["off_arm"], r["oracle_arm"]) == ("on-forced", "off-forced", "sweep-r24-p2")
    assert r["speedup"] == pytest.approx(280 / 165)
    assert r["gap"] == pytest.approx(165 / 150 - 1)
    md = report.markdown(cases)
    assert "| wan13b-17f |" in md and "1.70×" in md and "+10.0%" in md and "oom" in md
    assert "offload R=24/30 P=2 leading" in md


def test_oracle_counts_a_streamed_off_arm_but_never_a_resident_or_plugin_arm():
    # sglang's defaults streamed the DiT (r0 p1) faster than the only sweep point: that is the oracle
    runs = [_arm("off", "off", False, 7600.0, resident=0, prefetch=1),
            _arm("on", "on", True, 7500.0, resident=1, prefetch=1),
            _arm("sweep-r2-p1", "sweep", False, 7700.0, resident=2, prefetch=1)]
    assert report.oracle(runs)["arm"] == "off"
    # an all-resident off arm is not a streamed setting: the sweep point stays the oracle
    runs[0] = _arm("off", "off", False, 7000.0, offload=False)
    assert report.oracle(runs)["arm"] == "sweep-r2-p1"


def test_report_plots(tmp_path):
    pytest.importorskip("matplotlib")
    arms = [_arm("off", "off", False, 160.0, offload=False), _arm("on", "on", True, 165.0, resident=24),
            _arm("sweep-r0-p1", "sweep", False, 280.0, resident=0, prefetch=1)]
    root = tmp_path / "c"
    _write_case(str(root), "c", arms)
    os.makedirs(root / "traces" / "on")
    trace = [{"layer": i, "copy_start_ms": 10.0 * i, "copy_end_ms": 10.0 * i + 4, "compute_start_ms": 10.0 * i + 4,
              "compute_end_ms": 10.0 * i + 9} for i in range(5)]
    (root / "traces" / "on" / "trace_step1.json").write_text(json.dumps(trace))
    out = tmp_path / "rep"
    assert report.main([str(root), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert len(pngs) == 2 and any("timeline" in p for p in pngs)
    assert "![" in (out / "table.md").read_text()


FAKE_SGLANG = textwrap.dedent('''\
    """Stands in for `sglang generate`: writes the documented log lines and perf dump."""
    import json, os, sys
    args = sys.argv[1:]
    def val(flag, default=None):
        return args[len(args) - 1 - args[::-1].index(flag) + 1] if flag in args else default
    offload = val("--dit-layerwise-offload", "false") == "true"
    resident = int(float(val("--dit-layerwise-resident-layers", 0)))
    prefetch = int(float(val("--dit-offload-prefetch-size", 1)))
    print("server_args: " + json.dumps({"dit_layerwise_offload": offload, "dit_offload_prefetch_size": prefetch,
          "dit_layerwise_resident_layers": resident, "performance_mode": "auto"}))
    if os.environ.get("SGLANG_AUTOPERF") == "1":
        print("[autoperf] applied resident_layers=20 prefetch=2")
        offload, resident, prefetch = True, 20, 2
    if resident > 25:
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB"); sys.exit(0)
    if offload:
        print(f"Layerwise offload ready for transformer in 0.1s: groups=1, layers=30, prefetch/group={prefetch}, "
              f"resident={resident}/30 (forward), policy=leading")
    step = 150.0 if not offload else 150.0 + (30 - resident) * (3.0 if prefetch == 1 else 0.5)
    steps = int(val("--num-inference-steps"))
    dump = {"total_duration_ms": 1000.0 + steps * step,
            "steps": [{"name": "DenoisingStage", "duration_ms": steps * step}],
            "denoise_steps_ms": [{"step": i, "duration_ms": step * (20 if i == 0 else 1)} for i in range(steps)],
            "memory_checkpoints": {"end": {"peak_allocated_mb": 500.0 + resident * 90.0}}}
    json.dump(dump, open(val("--perf-dump-path"), "w"))
    ''')


def test_compare_end_to_end_with_fake_sglang(tmp_path):
    fake = tmp_path / "fake_sglang.py"
    fake.write_text(FAKE_SGLANG)
    model = tmp_path / "Wan2.1-T2V-1.3B-Diffusers-random"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text(json.dumps({"num_layers": 30}))
    out = tmp_path / "out"
    rc = compare.main(["--model-path", str(model), "--frames", "17", "--steps", "6", "--arms", "off,on",
                       "--arm", "off-forced=--dit-layerwise-offload true",
                       "--arm", "big=--dit-layerwise-offload true --dit-layerwise-resident-layers 28",
                       "--sglang-cmd", f"{sys.executable} {fake}", "--python", sys.executable,
                       "--out", str(out), "--case", "fake", "--timeout", "60", "--settle", "0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    by = {a["arm"]: a for a in summary["arms"]}
    assert by["off"]["status"] == "ok" and by["off"]["steady"]["median_ms"] == 150.0
    assert by["on"]["settings"]["resident_layers"] == 20  # read back from the log, not assumed
    assert by["off-forced"]["settings"]["prefetch"] == 1
    assert by["big"]["status"] == "oom"
    run = json.loads((out / "runs" / "on.json").read_text())
    assert run["env"]["SGLANG_AUTOPERF"] == "1" and run["log_readback"]["autoperf_lines"]
    assert "card" in run and "versions" in run
    rows = report.comparisons(report.find_cases([str(out)])[0])
    assert rows[0]["speedup"] == pytest.approx(150.0 / 155.0)


def test_monitor_overhead_pairs_traced_steps_with_untraced_neighbours(tmp_path, capsys):
    import json

    import monitor_overhead as mo

    # traced steps 2 and 4 cost 2% more than their neighbours; step 0 (autotuning) is ignored
    steps = [900.0, 100.0, 102.0, 100.0, 102.0, 100.0]
    result = mo.paired_overhead(steps, {2, 4})
    assert result["paired_overhead_pct"] == [2.0, 2.0]
    assert result["untraced_median_ms"] == 100.0 and result["traced_median_ms"] == 102.0
    # warmup requests' traces are skipped; the others are matched to served requests in order
    for number, warmup, traced in [(1, True, [1, 2]), (2, False, [2, 4]), (3, False, [1, 3, 5])]:
        (tmp_path / f"trace-rank0-req{number}-pid7.json").write_text(json.dumps(
            {"meta": {"warmup": warmup}, "steps": [{"step": s, "monitor_host_ms": 0.5 + s / 10, "monitor_record_ms": 0.1} for s in traced]}))
    assert mo.traced_steps_per_request(str(tmp_path)) == [{2, 4}, {1, 3, 5}]
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"card": "x", "requests": [
        {"status": "ok", "steps_ms": steps}, {"status": "ok", "steps_ms": [900.0, 103.0, 100.0, 103.0, 100.0, 103.0]}]}))
    assert mo.main([str(run), str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pairs"] == 5 and doc["median_paired_overhead_pct"] == pytest.approx(3.0)
    # host ms of steps 2, 4 | 1, 3, 5 = 0.7, 0.9 | 0.6, 0.8, 1.0; untraced medians 100 and 100
    assert doc["median_monitor_host_ms"] == pytest.approx(0.8)
    assert doc["median_monitor_host_pct"] == pytest.approx(0.8)
    assert doc["median_monitor_record_ms"] == pytest.approx(0.1)


def test_ready_line_with_class_name_is_read_back():
    # RECORDED: sglang 0.5.23 on an H200 (GPU sandbox), 2026-11-27, FLUX.1-dev-shaped DiT at 24 GiB free
    log = ("[11-27 15:03:35] Layerwise offload ready for transformer (FluxTransformer2DModel) in 6.37s: "
           "groups=2, layers=57, prefetch/group=2, resident=28/57 (forward), policy=strided\n")
    eff = compare.effective_settings(compare.parse_log(log))
    assert eff["source"] == "offload-log"
    assert (eff["resident_layers"], eff["total_layers"], eff["prefetch"], eff["policy"]) == (28, 57, 2, "strided")


def test_same_case_from_two_calls_gets_two_labels_and_a_skipped_baseline_is_passed_over(tmp_path):
    arms = [_arm("off", "off", False, 160.0, offload=False),
            _arm("on-forced", "explicit", True, 170.0, resident=3),
            _arm("off-forced", "explicit", False, None, status="skipped")]
    for call in ("call3", "call4"):
        _write_case(str(tmp_path / call), "wan13b-17f-short", arms)
    cases = report.find_cases([str(tmp_path)])
    assert sorted(c["label"] for c in cases) == ["wan13b-17f-short (call3)", "wan13b-17f-short (call4)"]
    rows = report.comparisons(cases[0])
    assert [(r["on_arm"], r["off_arm"]) for r in rows] == [("on-forced", "off")]


def test_live_placement_of_the_plugin_wins_over_the_load_time_line():
    log = ("[11-27 17:22:28] Layerwise offload ready for transformer (WanTransformer3DModel) in 0.84s: groups=1, "
           "layers=30, prefetch/group=2, resident=1/30 (forward), policy=strided\n"
           "[11-27 17:22:34] [autoperf] calibration of 832x480x17f_b1_cfg1: switched to resident=3 prefetch=3 leading "
           "(kept resident=3 prefetch=3 leading: 1.37 GiB vs baseline 0.93 GiB)\n")
    parsed = compare.parse_log(log)
    assert parsed["layerwise_offload"][0]["resident"] == 1
    s = compare.effective_settings(parsed)
    assert (s["resident_layers"], s["prefetch"], s["policy"]) == (3, 3, "leading")
    assert s["source"].startswith("autoperf-live") and "R=1 P=2 strided" in s["source"]
    hit = log.replace("calibration of 832x480x17f_b1_cfg1: switched to",
                      "tuning cache hit for 832x480x17f_b1_cfg1:")
    assert compare.effective_settings(compare.parse_log(hit))["resident_layers"] == 3
    plain = compare.effective_settings(compare.parse_log(log.splitlines()[0]))
    assert (plain["resident_layers"], plain["policy"], plain["source"]) == (1, "strided", "offload-log")


def test_plugin_arms_get_a_cache_per_case_and_plain_arms_no_plugin():
    base = {"SGLANG_AUTOPERF": "1", "PATH": "/bin"}
    on = compare.arm_env(compare.Arm("on", "", True, "on"), [], "/r/case", base)
    assert on["SGLANG_AUTOPERF"] == "1" and on["SGLANG_AUTOPERF_CACHE_DIR"] == "/r/case/cache"
    assert on["SGLANG_AUTOPERF_TRACE_DIR"] == "/r/case/traces/on"
    # calibration steps are traced, served steps are not (as for a user): no step of 10 requests
    from sglang_autoperf.settings import Settings
    served = Settings.from_env(on)
    assert not any(served.traces_step(step, req) for req in range(10) for step in range(200))
    assert Settings.from_env({**on, "SGLANG_AUTOPERF_TRACE_EVERY": "1"}).traces_step(3, 0)
    off = compare.arm_env(compare.Arm("off", "", False, "off"), [], "/r/case", base)
    assert "SGLANG_AUTOPERF" not in off and "SGLANG_AUTOPERF_CACHE_DIR" not in off
    pinned = compare.arm_env(compare.Arm("on", "", True, "on"), ["SGLANG_AUTOPERF_CACHE_DIR=/keep"], "/r/case", base)
    assert pinned["SGLANG_AUTOPERF_CACHE_DIR"] == "/keep"
