"""The plugin callback: opt-in parsing, the sglang version gate, and what it registers."""
from __future__ import annotations

import logging

import pytest

from sglang_autoperf import plugin
from sglang_autoperf.sglang_adapter import binding as sglang_binding, contract as sglang_contract
from sglang_autoperf.settings import Settings, SettingsError, parse_switch


@pytest.fixture
def registry(monkeypatch):
    """sglang's real diffusion HookRegistry, emptied for the test and restored after."""
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry

    saved = {k: list(v) for k, v in HookRegistry._hooks.items()}
    HookRegistry._hooks.clear()
    monkeypatch.setattr(sglang_binding.RUN, "cpu_fallbacks_registered", False)
    monkeypatch.delenv("_SGLANG_AUTOPERF_ANNOUNCED", raising=False)
    for name in ("SGLANG_AUTOPERF", "SGLANG_AUTOPERF_LOSSY", "SGLANG_AUTOPERF_VRAM_BUDGET", "SGLANG_AUTOPERF_FAIL_AT",
                 "SGLANG_AUTOPERF_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    yield HookRegistry
    HookRegistry._hooks.clear()
    HookRegistry._hooks.update(saved)


def ours(registry) -> list[str]:
    return sorted(t for t, hooks in registry._hooks.items()
                  if any(getattr(h, "__module__", "").startswith("sglang_autoperf") for _, h, _ in hooks))


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("0", False), ("off", False),
                                             ("false", False), ("1", True), ("true", True), ("ON", True)])
def test_switch_values(value, expected):
    assert parse_switch("SGLANG_AUTOPERF", value) is expected


@pytest.mark.parametrize("value", ["2", "maybe", "enable"])
def test_bad_switch_value_names_value_and_accepted(value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SGLANG_AUTOPERF": value})
    assert repr(value) in str(err.value) and "1/true/on/yes" in str(err.value)


def test_compile_is_opt_in_and_strictly_parsed():
    assert Settings.from_env({"SGLANG_AUTOPERF": "1"}).compile is False
    assert Settings.from_env({"SGLANG_AUTOPERF": "1", "SGLANG_AUTOPERF_COMPILE": "1"}).compile is True
    with pytest.raises(SettingsError, match="SGLANG_AUTOPERF_COMPILE"):
        Settings.from_env({"SGLANG_AUTOPERF": "1", "SGLANG_AUTOPERF_COMPILE": "max-autotune"})


@pytest.mark.parametrize("budget", ["lots", "-3GiB", "2.5", "12 parsecs"])
def test_bad_budget_is_a_settings_error(budget):
    with pytest.raises(SettingsError, match="SGLANG_AUTOPERF_VRAM_BUDGET"):
        Settings.from_env({"SGLANG_AUTOPERF": "1", "SGLANG_AUTOPERF_VRAM_BUDGET": budget})


@pytest.mark.parametrize("every", ["0", "-1", "two", "1.5"])
def test_bad_trace_every_is_a_settings_error(every):
    with pytest.raises(SettingsError, match="SGLANG_AUTOPERF_TRACE_EVERY"):
        Settings.from_env({"SGLANG_AUTOPERF": "1", "SGLANG_AUTOPERF_TRACE_EVERY": every})


def test_trace_every_two_alternates_traced_steps_between_requests():
    s = Settings.from_env({"SGLANG_AUTOPERF": "1", "SGLANG_AUTOPERF_TRACE_DIR": "/tmp/t", "SGLANG_AUTOPERF_TRACE_EVERY": "2"})
    first = [step for step in range(8) if s.traces_step(step, request_index=0)]
    second = [step for step in range(8) if s.traces_step(step, request_index=1)]
    assert first == [2, 4, 6] and second == [1, 3, 5, 7]
    every = Settings.from_env({"SGLANG_AUTOPERF": "1", "SGLANG_AUTOPERF_TRACE_DIR": "/tmp/t"})
    assert [step for step in range(4) if every.traces_step(step, 0)] == [1, 2, 3]
    untraced = Settings.from_env({"SGLANG_AUTOPERF": "1"})
    assert not any(untraced.traces_step(step, 0) for step in range(4))


def test_unset_registers_nothing(registry):
    plugin.register()
    assert ours(registry) == []


def test_enabled_registers_launch_worker_and_live_hooks(registry, monkeypatch):
    monkeypatch.setenv("SGLANG_AUTOPERF", "1")
    plugin.register()
    targets = ours(registry)
    for target in (sglang_contract.TARGET_LAUNCH, sglang_contract.TARGET_WORKER_INIT, sglang_contract.TARGET_DENOISE_STEP,
                   sglang_contract.TARGET_DENOISE_LOOP):
        assert target in targets


def test_calibrate_off_registers_no_live_hooks(registry, monkeypatch):
    monkeypatch.setenv("SGLANG_AUTOPERF", "1")
    monkeypatch.setenv("SGLANG_AUTOPERF_CALIBRATE", "0")
    plugin.register()
    assert sglang_contract.TARGET_LAUNCH in ours(registry)
    assert sglang_contract.TARGET_DENOISE_STEP not in ours(registry)


def _sglang_reports(monkeypatch, version: str) -> None:
    """The installed sglang claims `version`; every other package reports its own."""
    real = plugin.metadata.version
    monkeypatch.setattr(plugin.metadata, "version", lambda name: version if name == "sglang" else real(name))


def test_an_older_sglang_turns_plugin_off(registry, monkeypatch, caplog):
    monkeypatch.setenv("SGLANG_AUTOPERF", "1")
    _sglang_reports(monkeypatch, "0.5.22")
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        plugin.register()
    assert ours(registry) == []
    lines = [r.getMessage() for r in caplog.records if "older than 0.5.23" in r.getMessage()]
    assert len(lines) == 1 and "sglang 0.5.22" in lines[0] and "plugin stays off" in lines[0]


@pytest.mark.parametrize("version", ["0.5.24", "0.6.0"])
def test_a_newer_sglang_runs_after_its_contract_self_check_passes(registry, monkeypatch, caplog, version):
    """The installed sglang (0.5.23) answers the self-check as a newer release with the same
    internals would: the plugin runs, and says once that the release is untested."""
    monkeypatch.setenv("SGLANG_AUTOPERF", "1")
    _sglang_reports(monkeypatch, version)
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        plugin.register()
    assert sglang_contract.TARGET_LAUNCH in ours(registry)
    [line] = [r.getMessage() for r in caplog.records if "newer than the tested range" in r.getMessage()]
    assert f"sglang {version}" in line and ">=0.5.23,<0.5.24" in line and "running untested" in line


def test_a_newer_sglang_whose_internals_moved_is_left_alone(registry, monkeypatch, caplog):
    monkeypatch.setenv("SGLANG_AUTOPERF", "1")
    _sglang_reports(monkeypatch, "0.6.0")
    monkeypatch.setattr(sglang_contract, "TARGET_DENOISE_STEP",
                        "sglang.multimodal_gen.runtime.pipelines_core.stages.denoising.DenoisingStage._renamed")
    monkeypatch.setattr(sglang_contract, "_MANAGER_METHODS", ("release_all", "no_such_method"))
    with caplog.at_level(logging.WARNING, logger="sglang.autoperf"):
        plugin.register()
    assert ours(registry) == []
    [line] = [r.getMessage() for r in caplog.records if "contract self-check failed" in r.getMessage()]
    assert "DenoisingStage._renamed is missing" in line and "plugin stays off" in line


def test_the_installed_sglang_passes_the_contract_self_check():
    assert sglang_contract.contract_problems() == []


def test_supported_versions():
    assert plugin.unsupported_sglang_reason("0.5.23") is None
    assert plugin.unsupported_sglang_reason("0.5.23.post1") is None
    assert plugin.unsupported_sglang_reason("0.5.30") is None  # newer: the self-check decides
    assert "older" in plugin.unsupported_sglang_reason("0.4.9")


def test_cpu_fallbacks_register_once(registry):
    sglang_binding.register_cpu_fallbacks()
    sglang_binding.register_cpu_fallbacks()  # the test-support plugin may ask again in one process
    for target, _ in sglang_contract.CPU_FALLBACKS:
        assert len(registry._hooks[target]) == 1
