"""Tuning cache: keys, atomic writes, damaged entries, concurrent writers, unwritable directories."""
from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from sglang_autoperf.cache import StepSummary, TuningCache, TuningKey, TuningResult
from sglang_autoperf.trace import Placement, StepStats
from sglang_autoperf.settings import ENV_CACHE_DIR

GiB = 1024**3


def make_key(**over) -> TuningKey:
    base = dict(
        model_fingerprint="f" * 64, gpu_name="NVIDIA H100 80GB HBM3", gpu_total_memory_bytes=80 * GiB,
        link="pcie5x16", gpu_count=1, layout="ulysses1-ring1-cfg1-tp1", sglang_version="0.5.23",
        torch_version="2.9.1", lora_adapters=(), batch_size=1, shape_bucket="1024x1024",
        budget="", objective="speed", pinned_placement="", plugin_version="0.1.0", cost_model_version=1,
    )
    base.update(over)
    return TuningKey(**base)


def make_result(tag: int = 0) -> TuningResult:
    base, chosen = Placement(0, 1, "leading"), Placement(30 + tag % 5, 2, "strided")
    return TuningResult(
        placement=chosen, objective="speed", baseline=base,
        stats={base.label(): StepStats(430.0, 425.0, 441.0, 6), chosen.label(): StepStats(210.0 + tag, 205.0, 214.0, 6)},
        reason=f"kept {chosen.label()} (synthetic, writer {tag})", calibration_s=12.5, steps_used=18,
        before=StepSummary(430.0, 148.0, 290.0, 282.0, 6), after=StepSummary(210.0, 148.0, 120.0, 62.0, 6),
        vram_bytes=22 * GiB, baseline_vram_bytes=3 * GiB, created_at=1_800_000_000.0 + tag,
    )


def test_put_get_round_trip(tmp_path):
    cache, key, res = TuningCache(tmp_path), make_key(), make_result()
    assert cache.get(key) is None
    cache.put(key, res)
    assert cache.get(key) == res
    assert TuningCache(tmp_path).get(key) == res  # a fresh process-like instance reads it too
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{key.digest()}.json"]
    doc = json.loads(files[0].read_text())
    assert set(doc) >= {"key", "result", "written_at"}


CHANGED = {
    "model_fingerprint": "e" * 64, "gpu_name": "NVIDIA H200", "gpu_total_memory_bytes": 141 * GiB,
    "link": "pcie4x16", "gpu_count": 2, "layout": "ulysses2-ring1-cfg1-tp1", "sglang_version": "0.5.24",
    "torch_version": "2.10.0", "lora_adapters": ("style-a",), "batch_size": 2, "shape_bucket": "1328x1328",
    "budget": "0.5 of free", "objective": "memory", "pinned_placement": "dit_offload_prefetch_size=2.0",
    "plugin_version": "0.2.0", "cost_model_version": 2,
}


def test_changed_covers_every_key_field():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(TuningKey)}
    names = {f.name for f in dataclasses.fields(TuningKey)}
    assert not any("free" in n or "uuid" in n for n in names)


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_miss_on_each_key_field(tmp_path, field):
    cache = TuningCache(tmp_path)
    cache.put(make_key(), make_result())
    other = make_key(**{field: CHANGED[field]})
    assert other.digest() != make_key().digest()
    assert cache.get(other) is None
    assert cache.get(make_key()) is not None


def test_key_is_canonical():
    assert make_key(lora_adapters=("b", "a")).digest() == make_key(lora_adapters=["a", "b"]).digest()
    assert make_key().digest() == make_key().digest()
    assert len(make_key().digest()) == 64


@pytest.mark.parametrize("damage", [
    b"\x00\xff\xfe garbage \x89PNG",
    b'{"schema": 1, "key": {"model_fingerprint": "ff',  # truncated
    b'{"hello": "world"}',  # valid JSON, wrong schema
    b'[1, 2, 3]',
])
def test_damaged_entry_is_a_miss_with_one_warning_then_rewritten(tmp_path, caplog, damage):
    cache, key = TuningCache(tmp_path), make_key()
    path = cache.path_for(key)
    path.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        assert cache.get(key) is None
        assert cache.get(key) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("[autoperf] ") and str(path) in warnings[0].getMessage()
    assert cache.put(key, make_result())
    assert cache.get(key) == make_result()


def test_entry_under_the_wrong_name_is_rejected(tmp_path, caplog):
    cache = TuningCache(tmp_path)
    cache.put(make_key(), make_result())
    other = make_key(batch_size=4)
    os.replace(cache.path_for(make_key()), cache.path_for(other))
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        assert cache.get(other) is None
    assert any("does not match" in r.getMessage() for r in caplog.records)


def test_missing_result_field_is_damage(tmp_path, caplog):
    cache, key = TuningCache(tmp_path), make_key()
    cache.put(key, make_result())
    doc = json.loads(cache.path_for(key).read_text())
    del doc["result"]["placement"]
    cache.path_for(key).write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        assert cache.get(key) is None
    assert len(caplog.records) == 1


def _writer(args):
    directory, worker, same_key = args
    cache = TuningCache(Path(directory))
    for i in range(50):
        key = make_key() if same_key else make_key(batch_size=1 + worker, shape_bucket=f"b{i % 5}")
        assert cache.put(key, make_result(worker * 100 + i))
    return worker


@pytest.mark.parametrize("same_key", [True, False])
def test_concurrent_writers_never_tear(tmp_path, same_key):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(8) as pool:
        assert sorted(pool.map(_writer, [(str(tmp_path), w, same_key) for w in range(8)])) == list(range(8))
    files = sorted(tmp_path.iterdir())
    assert all(f.suffix == ".json" for f in files), "temporary files left behind"
    assert len(files) == (1 if same_key else 8 * 5)
    for f in files:
        doc = json.loads(f.read_text())
        TuningResult.from_dict(doc["result"])
    cache = TuningCache(tmp_path)
    assert len(cache.entries()) == len(files)
    if same_key:
        assert cache.get(make_key()) is not None


def test_unwritable_directory_warns_and_continues(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = TuningCache(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        assert cache.put(make_key(), make_result()) is False
        assert cache.put(make_key(), make_result()) is False
        assert cache.get(make_key()) is None
        assert cache.latest() is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("[autoperf] ") and "continues" in warnings[0]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_directory(tmp_path, caplog):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
            assert TuningCache(ro).put(make_key(), make_result()) is False
        assert caplog.records
    finally:
        ro.chmod(0o700)


def test_latest_and_entries(tmp_path):
    cache = TuningCache(tmp_path)
    assert cache.latest() is None and cache.entries() == []
    cache.put(make_key(batch_size=1), make_result(1))
    cache.put(make_key(batch_size=2), make_result(2))
    key, res = cache.latest()
    assert key.batch_size == 2 and res == make_result(2)
    assert [k.batch_size for k, _ in cache.entries()] == [1, 2]
    (tmp_path / "zzzz.json").write_text("{broken")  # a damaged file does not hide the others
    assert cache.latest()[0].batch_size == 2


def test_default_directory_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "c"))
    assert TuningCache().directory == tmp_path / "c"


def test_result_json_round_trip_with_traces():
    res = make_result()
    res.traces = [{"step": 1, "wall_ms": 1.0, "placement": {"resident_layers": 0, "prefetch_layers": 1,
                                                           "policy": "leading"}, "passes": []}]
    back = TuningResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res
    assert back.step_traces()[0].wall_ms == 1.0


def test_permission_denied_on_write_warns_and_continues(tmp_path, caplog, monkeypatch):
    # what a read-only directory does, also when the tests run as root
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        assert TuningCache(tmp_path).put(make_key(), make_result()) is False
    assert len(caplog.records) == 1 and "PermissionError" in caplog.records[0].getMessage()
    assert list(tmp_path.iterdir()) == []


def test_from_calibration_summarizes_steps():
    from sglang_autoperf.trace import LayerTiming, PassTrace, StepTrace

    def step(i, wall, p):
        lt = LayerTiming(0, 1.0, 3.0, 1.0, 0.0, 1.0, 10)
        return StepTrace(i, wall, p, (PassTrace("transformer", "blocks", 1, (lt,)),))

    base, new = Placement(0, 1), Placement(1, 1)
    before = [step(i, w, base) for i, w in enumerate([10.0, 12.0, 11.0])]
    after = [step(i, w, new) for i, w in enumerate([5.0, 6.0])]
    r = TuningResult.from_calibration(placement=new, baseline=base, objective="speed", reason="r",
                                      stats={}, calibration_s=1.0, steps_used=5, before=before, after=after,
                                      vram_bytes=3)
    assert r.before.step_ms == 11.0 and r.after.step_ms == 5.5 and r.before.exposed_ms == 1.0
    assert len(r.traces) == 4
    assert TuningResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# --- values are checked, not trusted (issue 14, finding 3) -----------------------------------------

@pytest.mark.parametrize("path, value", [
    (("placement", "policy"), 7),  # not a name
    (("placement", "prefetch_layers"), "xyz"),
    (("placement", "resident_layers"), 0.5),  # sglang reads a fraction as a ratio of the layers
    (("placement", "resident_layers"), -5),
    (("placement", "resident_layers"), True),
    (("placement", "extra"), 1),
    (("baseline", "prefetch_layers"), None),
    (("compiled",), "false"),  # bool("false") is True
    (("compiled",), 0),
    (("objective",), "fastest"),
    (("steps_used",), 2.5),
    (("vram_bytes",), -1),
    (("calibration_s",), float("nan")),
    (("stats",), []),
    (("before", "step_ms"), "fast"),
])
def test_a_wrong_value_in_an_entry_is_a_logged_miss(tmp_path, caplog, path, value):
    cache, key = TuningCache(tmp_path), make_key()
    cache.put(key, make_result())
    doc = json.loads(cache.path_for(key).read_text())
    target = doc["result"]
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    cache.path_for(key).write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        assert cache.get(key) is None
    assert any("damaged tuning cache entry" in r.getMessage() for r in caplog.records)


def test_compiled_false_stays_false(tmp_path):
    cache, key = TuningCache(tmp_path), make_key(objective="compile")
    cache.put(key, dataclasses.replace(make_result(), objective="compile", compiled=False))
    assert cache.get(key).compiled is False


@pytest.mark.parametrize("placement, counts, problem", [
    (Placement(31, 2, "strided"), [30], "exceeds the largest layer list (30 layers)"),
    (Placement(5, 0, "leading"), [30], "prefetch 0 is outside 1..30"),
    (Placement(5, 31, "leading"), [30], "prefetch 31 is outside 1..30"),
    (Placement(5, 2, "evil"), [30], "policy 'evil' is not one of leading, strided"),
    (Placement(38, 2, "leading"), [19, 38], None),  # FLUX: the count applies per list, sglang clamps
    (Placement(30, 8, "strided"), [30], None),
])
def test_a_placement_is_checked_against_the_model_it_is_applied_to(placement, counts, problem):
    from sglang_autoperf.trace import placement_problem

    found = placement_problem(placement, counts, ("leading", "strided"))
    assert found == problem if problem is None else problem in found


# --- the budget in the key is what the user wrote (issue 14, finding 4) -----------------------------

def test_budget_key_keeps_a_fraction_and_unifies_amounts():
    from sglang_autoperf.cache import budget_key

    assert budget_key("0.5") == "0.5 of free" == budget_key(" .50 ")
    assert budget_key("24GiB") == budget_key("24576MiB") == f"{24 * GiB} bytes"
    assert budget_key("24GB") != budget_key("24GiB")
    assert budget_key(None) == budget_key("") == ""


def test_a_fractional_budget_hits_whatever_memory_is_free(tmp_path):
    """The key used to hold the budget's bytes at the moment's free memory: a second start with
    other free memory missed. Now both starts build one key."""
    from sglang_autoperf.cache import tuning_key

    identity = {"num_gpus": 1, "layout": "tp1", "sglang_version": "0.5.23", "torch_version": "2.11.0"}
    keys = [tuning_key(fingerprint="fp", gpu_key={"name": "H200"}, identity=identity, bucket="b", batch_size=1,
                       budget="0.5", objective="speed") for _ in range(2)]
    cache = TuningCache(tmp_path)
    cache.put(keys[0], make_result())
    assert cache.get(keys[1]) == make_result()


def test_the_key_carries_the_plugin_and_cost_model_versions(monkeypatch):
    import sglang_autoperf
    from sglang_autoperf.cache import tuning_key
    from sglang_autoperf.plan import cost

    identity = {"num_gpus": 1, "layout": "tp1", "sglang_version": "0.5.23", "torch_version": "2.11.0"}

    def key():
        return tuning_key(fingerprint="fp", gpu_key={}, identity=identity, bucket="b", batch_size=1, budget=None,
                          objective="speed").digest()

    first = key()
    monkeypatch.setattr(sglang_autoperf, "__version__", "9.9.9")
    assert key() != first
    monkeypatch.undo()
    monkeypatch.setattr(cost, "COST_MODEL_VERSION", cost.COST_MODEL_VERSION + 1)
    assert key() != first
