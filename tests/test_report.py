"""Calibration table and `explain` on a cache written here (SYNTHETIC numbers, not a measurement)."""
from __future__ import annotations

import json
import sys

import pytest

from sglang_autoperf.cache import StepSummary, TuningCache, TuningKey, TuningResult
from sglang_autoperf.trace import LayerTiming, PassTrace, Placement, StepStats, StepTrace
from sglang_autoperf.report import explain, format_calibration_table

GiB = 1024**3
BASE, CHOSEN = Placement(0, 1, "leading"), Placement(34, 2, "strided")


def synthetic_step(placement: Placement, n: int = 6) -> StepTrace:
    lts, t = [], 0.0
    for j in range(n):
        c0, c1 = t, t + 3.0
        cs = max(t, c1) if j % 2 else t
        lts.append(LayerTiming(j, cs, cs + 2.0, cs - t, c0 if j % 2 else None, c1 if j % 2 else None,
                               (1 << 20) if j % 2 else 0))
        t = cs + 2.0
    return StepTrace(3, t + 1.0, placement, (PassTrace("transformer", "blocks", n, tuple(lts)),))


def make_result(traces: bool = True) -> TuningResult:
    return TuningResult(
        placement=CHOSEN, objective="speed", baseline=BASE,
        stats={BASE.label(): StepStats(431.2, 425.0, 441.0, 6), CHOSEN.label(): StepStats(212.7, 205.0, 214.0, 6)},
        reason="kept resident=34 prefetch=2 strided: median 212.7 ms/step vs baseline 431.2 ms",
        calibration_s=12.5, steps_used=18,
        before=StepSummary(431.2, 148.3, 290.4, 282.9, 6, 0.62), after=StepSummary(212.7, 148.1, 121.6, 64.4, 6, 0.58),
        vram_bytes=int(22.5 * GiB), baseline_vram_bytes=3 * GiB,
        traces=[synthetic_step(BASE).to_dict(), synthetic_step(CHOSEN).to_dict()] if traces else [],
    )


def make_key() -> TuningKey:
    return TuningKey("f" * 64, "NVIDIA H100 80GB HBM3", 80 * GiB, "pcie5x16", 1, "ulysses1-ring1-cfg1-tp1",
                     "0.5.23", "2.9.1", (), 1, "1024x1024", None, "speed")


def test_table_holds_the_numbers():
    text = format_calibration_table(make_result())
    for s in ("431.2", "212.7", "148.3", "290.4", "121.6", "282.9", "64.4", "22.50 GiB", "3.00 GiB",
              "12.5 s", "18 steps", CHOSEN.label(), BASE.label(), "exposed copy", "switched to",
              "0.62 (0.1%)", "0.58 (0.3%)"):
        assert s in text, s


def test_explain_empty_cache(tmp_path, capsys):
    assert explain(cache_dir=str(tmp_path / "none")) == 2
    assert "no calibration" in capsys.readouterr().err


@pytest.fixture
def cache_dir(tmp_path):
    TuningCache(tmp_path).put(make_key(), make_result())
    return str(tmp_path)


def test_explain_table(cache_dir, capsys):
    assert explain(cache_dir=cache_dir) == 0
    out = capsys.readouterr().out
    assert "212.7" in out and "NVIDIA H100" in out


def test_explain_json_parses(cache_dir, capsys):
    assert explain(json_output=True, cache_dir=cache_dir) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["result"]["placement"]["resident_layers"] == 34
    assert doc["key"]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    back = TuningResult.from_dict(doc["result"])
    assert back.after.step_ms == 212.7 and back.placement == CHOSEN and len(back.step_traces()) == 2


def test_explain_png(cache_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "timeline.png"
    assert explain(json_output=True, png=str(png), cache_dir=cache_dir) == 0
    json.loads(capsys.readouterr().out)  # the PNG note goes to stderr under --json
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_png_without_traces(tmp_path, capsys):
    TuningCache(tmp_path).put(make_key(), make_result(traces=False))
    assert explain(png=str(tmp_path / "x.png"), cache_dir=str(tmp_path)) == 2
    assert "no traced steps" in capsys.readouterr().err


def test_explain_png_without_matplotlib(cache_dir, tmp_path, capsys, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.patches", "matplotlib.backends",
                "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    assert explain(png=str(tmp_path / "x.png"), cache_dir=cache_dir) == 2
    assert "needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_explain_wired(cache_dir, capsys):
    from sglang_autoperf.cli import main

    rc = main(["explain", "--json", "--cache-dir", cache_dir])
    assert rc == 0
    json.loads(capsys.readouterr().out)


def test_a_per_list_calibration_recorded_on_an_h200_reads_per_list_with_its_memory():
    """The cache entry the worker wrote on the H200 (tests/fixtures/cache/README.md): the table names
    every list's placement, marks the chosen row, and states the memory it sized candidates by."""
    import json
    from pathlib import Path

    from sglang_autoperf.cache import TuningResult

    doc = json.loads((Path(__file__).parent / "fixtures" / "cache" / "h200-flux1dev-1024-lists16-2026-11-29.json").read_text())
    result = TuningResult.from_dict(doc["result"])
    text = format_calibration_table(result)
    chosen = ("transformer_blocks: resident=15 prefetch=1 strided; single_transformer_blocks: resident=2 "
              "prefetch=2 strided")
    assert text.splitlines()[0].endswith(f"switched to {chosen}")
    [row] = [line for line in text.splitlines() if "<- chosen" in line]
    assert row.strip().startswith(chosen) and "median 233.8 ms" in row
    m = doc["result"]["memory"]  # as recorded; the line states it in GiB
    [line] = [line for line in text.splitlines() if "memory at the start placement" in line]
    assert f"margin {m['margin_bytes'] / 2**30:.2f} GiB" in line
    assert f"at most {(m['limit_bytes'] - m['margin_bytes'] - m['fixed_bytes']) / 2**30:.2f} GiB" in line


def test_the_compression_choice_reads_with_its_two_medians_and_is_absent_when_not_measured():
    result = make_result()
    assert "compressed layer streaming" not in format_calibration_table(result)
    # the medians the H200 A/B logged beside a 16 GiB ballast (benchmarks/results/2026-11-29-h200-compress/)
    result.compressed_streaming, result.compression_ms = True, {"raw": 261.2, "compressed": 211.7}
    assert "compressed layer streaming: kept: 211.7 ms compressed vs 261.2 ms raw a step" in \
        format_calibration_table(result)
    result.compressed_streaming = False
    assert "compressed layer streaming: not kept" in format_calibration_table(result)
