"""`sglang-autoperf explain` on a tuning-cache entry written by a real calibration (H200, 2026-11-27,
sglang 0.5.23, Wan2.1-1.3B-shaped random checkpoint, 480x832x17f, offload pinned on)."""
import json
import shutil
from pathlib import Path

from sglang_autoperf.cache import TuningKey
from sglang_autoperf.cli import main

ENTRY = Path(__file__).parents[1] / "benchmarks" / "results" / "2026-11-27-h200" / "tuning_cache_entry_wan13b_17f.json"


def _install(cache: Path) -> None:
    """The entry predates cache schema 2 (budget as the user wrote it, pinned placement flags,
    plugin and cost-model versions in the key): its key gets today's fields, its measured result
    is used as recorded."""
    from sglang_autoperf.cache import SCHEMA_VERSION

    doc = json.loads(ENTRY.read_text())
    assert doc["schema"] == 1 and doc["key"].pop("budget_bytes") is None
    doc["key"].update(budget="", pinned_placement="", plugin_version="0.1.0", cost_model_version=1)
    doc["schema"] = SCHEMA_VERSION
    key = TuningKey.from_dict(doc["key"])
    (cache / f"{key.digest()}.json").write_text(json.dumps(doc))  # the cache names entries by key digest


def test_an_entry_of_an_older_schema_is_not_used_and_says_why(tmp_path, caplog):
    import logging

    from sglang_autoperf.cache import TuningCache

    shutil.copy(ENTRY, tmp_path / "old.json")
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        assert TuningCache(tmp_path).entries() == []
    [line] = [r.getMessage() for r in caplog.records]
    assert "written by an older sglang-autoperf (cache schema 1, now 2)" in line and "damaged" not in line


def test_explain_reads_the_recorded_calibration(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    _install(cache)
    assert main(["explain", "--json", "--cache-dir", str(cache)]) == 0
    out = json.loads(capsys.readouterr().out)
    text = json.dumps(out)
    assert "NVIDIA H200" in text and "832x480x17f_b1_cfg1" in text
    assert '"prefetch_layers": 6' in text  # what the calibration chose over prefetch 1


def test_explain_table_and_timeline_png(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    _install(cache)
    png = tmp_path / "timeline.png"
    assert main(["explain", "--cache-dir", str(cache), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "resident=0 prefetch=6 leading" in out and "195.9" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_with_only_an_older_schema_entry_says_none_is_usable(tmp_path, capsys):
    shutil.copy(ENTRY, tmp_path / "old.json")
    assert main(["explain", "--cache-dir", str(tmp_path)]) == 0  # a valid cache, nothing current in it
    out = capsys.readouterr().out
    assert out.startswith(f"no usable tuning results in {tmp_path}: its 1 .json file(s)")
