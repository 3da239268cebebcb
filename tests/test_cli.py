"""`sglang-autoperf` as a newcomer meets it (issue 19): help, verdicts, exit codes, bundled GPU
profiles, words instead of placeholders, and the README's Commands section run as written."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from sglang_autoperf.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "fixtures" / "models"
WAN14B = MODELS / "Wan2.1-T2V-14B-Diffusers"
FLUX = MODELS / "FLUX.1-dev"
H200_RECORDING = ROOT / "tests" / "fixtures" / "nvml" / "nvml-2x-h200-141gb-2026-11-27.json"
GiB = 2**30


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _no_nvidia() -> bool:
    from sglang_autoperf.probe.gpu import probe_gpus

    return probe_gpus().source == "none"


# ---- help ----------------------------------------------------------------------------------------

def test_bare_command_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sglang-autoperf")
    for command in ("demo-model", "probe", "plan", "explain"):
        assert command in out


@pytest.mark.parametrize("command", ["demo-model", "probe", "plan", "explain"])
def test_every_option_has_a_help_text(command, capsys):
    options = [a for a in _subparsers()[command]._actions if not isinstance(a, argparse._HelpAction)]
    assert options and [a.dest for a in options if not a.help] == []
    assert main([command, "--help"]) == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps long help texts, also at hyphens
    for action in options:
        assert "".join(action.help.split()) in out, action.dest


# ---- plan ----------------------------------------------------------------------------------------

def test_plan_takes_a_bundled_profile_by_name(capsys):
    assert main(["plan", "--gpu-snapshot", "h200", "--model-path", str(FLUX), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    free = min(g["mem_free"] for g in json.loads(H200_RECORDING.read_text())["gpus"])
    # The whole free memory of the recorded H200 is the budget; a 12B-parameter FLUX fits in it.
    assert doc["predicted"]["budget_bytes"] == free
    assert doc["verdict"] == "fits" and 24 * GiB < doc["predicted"]["vram_bytes"] <= free


def test_an_unknown_profile_name_is_one_line_naming_the_bundled_ones(capsys):
    assert main(["plan", "--gpu-snapshot", "h300", "--model-path", str(FLUX)]) == 2
    out, err = capsys.readouterr()
    assert not out and len(err.strip().splitlines()) == 1
    assert "'h300'" in err and all(n in err for n in ("h100", "h200", "a100", "rtx4090", "b200"))


def test_plan_over_budget_exits_3_with_the_verdict_first(capsys):
    # Wan2.1-14B's DiT alone is 26.6 GiB of bf16 weights: no placement fits in 1 GiB.
    assert main(["plan", "--gpu-snapshot", "h200", "--model-path", str(WAN14B), "--vram-budget", "1GiB"]) == 3
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("verdict: does not fit the budget") and "1.0 GiB" in first


def test_plan_over_budget_json_says_so_and_exits_3(capsys):
    argv = ["plan", "--gpu-snapshot", "h200", "--model-path", str(WAN14B), "--vram-budget", "1GiB", "--json"]
    assert main(argv) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "does not fit the budget" and doc["predicted"]["vram_bytes"] > GiB


def test_plan_within_budget_says_fits_first(capsys):
    assert main(["plan", "--gpu-snapshot", "rtx4090", "--model-path", str(WAN14B)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("verdict: fits")


def test_plan_names_the_workload_it_assumed_and_whose_each_number_is(capsys):
    from sglang_autoperf.probe.model import probe_model

    assert main(["plan", "--gpu-snapshot", "h100", "--model-path", str(WAN14B), "--width", "640"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    steps = probe_model(WAN14B).default_steps  # sglang's own default for this model
    # Wan's published default guidance (5.0) is true CFG: two DiT passes per step.
    for part in ("width 640 (from you)", "height 480 (default)", "81 frames (default)",
                 f"{steps} steps (the model's default)", "batch 1 (default)", "2 CFG passes per step"):
        assert part in line, part


def test_plan_of_an_image_model_says_frames_do_not_apply(capsys):
    assert main(["plan", "--gpu-snapshot", "h100", "--model-path", str(FLUX), "--steps", "28"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    # FLUX.1-dev embeds its guidance (distilled): one DiT pass per step.
    for part in ("width 1024 (default)", "1 frame (an image model)", "28 steps (from you)", "1 CFG pass per step"):
        assert part in line, part


# ---- explain and probe ---------------------------------------------------------------------------

def test_explain_on_an_empty_cache_says_what_exists_and_why(tmp_path, capsys):
    assert main(["explain", "--cache-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"no tuning results in {tmp_path}: ") and "on a CPU nothing is tuned" in out
    assert "layerwise offload" in out and "torch.compile" in out and not err


def test_explain_before_any_run_is_not_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SGLANG_AUTOPERF_CACHE_DIR", str(tmp_path / "never-written"))
    assert main(["explain"]) == 0
    assert "(it does not exist yet)" in capsys.readouterr().out


def test_explain_on_a_cache_dir_that_is_a_file_is_bad_input(tmp_path, capsys):
    (tmp_path / "cache").write_text("")
    assert main(["explain", "--cache-dir", str(tmp_path / "cache")]) == 2
    out, err = capsys.readouterr()
    assert not out and err.startswith("sglang-autoperf explain: error: ") and "not a directory" in err


@pytest.mark.skipif(not _no_nvidia(), reason="this machine has NVML: the no-GPU wording does not apply")
def test_probe_without_nvidia_says_so_in_words(capsys):
    assert main(["probe"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("no NVIDIA GPU visible: ")
    assert "source none" not in out and "driver ?" not in out and "GPU(s)" not in out
    assert "--gpu-snapshot" in out  # where to go from here


@pytest.mark.skipif(not _no_nvidia(), reason="this machine has NVML")
def test_plan_without_a_gpu_or_snapshot_names_the_bundled_profiles(capsys):
    assert main(["plan", "--model-path", str(FLUX)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--gpu-snapshot" in err and "h200" in err


# ---- the README's Commands section, run as written -------------------------------------------------

README = ROOT / "README.md"
DEMO = "/tmp/autoperf-demo-wan"  # the README's demo folder; the test writes its own


def _readme_session() -> list[tuple[str, list[str]]]:
    """(command, the lines the README shows after it) for each `$ ` line of the Commands section."""
    text = README.read_text()
    section = text[text.index("Commands (no GPU needed"):text.index("## Results so far")]
    runs: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                runs.append((line[2:], []))
            else:
                runs[-1][1].append(line)
    return runs


def _line_matches(shown: str, printed: str) -> bool:
    return re.fullmatch(".*".join(re.escape(part) for part in shown.split("...")), printed) is not None


def _shows(shown: list[str], printed: list[str]) -> bool:
    """Whether `printed` is what the README shows: its lines in order, a `...` line standing for any
    number of lines, `...` inside a line for any text."""
    at, gap = 0, False
    for line in shown:
        if line == "...":
            gap = True
            continue
        while at < len(printed) and not _line_matches(line, printed[at]):
            if not gap:
                return False
            at += 1
        if at == len(printed):
            return False
        at, gap = at + 1, False
    return gap or at == len(printed)


def test_readme_shows_a_session_worth_checking():
    commands = [c for c, _ in _readme_session()]
    assert sum(c.startswith("sglang-autoperf ") for c in commands) >= 6 and "echo $?" in commands


def test_readme_commands_print_what_the_readme_says(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    for var in ("SGLANG_AUTOPERF_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # `explain` reads ~/.cache: a fresh one
    demo = str(tmp_path / "autoperf-demo-wan")
    rc = None
    for command, shown in _readme_session():
        if command == "echo $?":
            assert [str(rc)] == shown, f"exit code {rc}, the README says {shown}"
            continue
        argv = shlex.split(command.replace(DEMO, demo))
        assert argv[0] == "sglang-autoperf", command
        if argv[1:] == ["probe"] and not _no_nvidia():
            continue  # the README shows a machine without an NVIDIA driver
        rc = main(argv[1:])
        out = capsys.readouterr().out.replace(demo, DEMO).replace(os.path.expanduser("~"), "~")
        assert rc in (0, 3), command
        assert _shows(shown, out.splitlines()), f"{command}\n--- README:\n" + "\n".join(shown) + f"\n--- printed:\n{out}"


def test_model_id_resolves_a_neutrally_named_folder_as_sglang_would(tmp_path, capsys):
    """A FLUX.1-dev folder under a name no registered id matches: sglang (and the probe) would run it
    with the diffusers backend, one line, exit 2; with --model-id FLUX.1-dev it is FLUX, as in sglang."""
    import shutil
    from pathlib import Path

    folder = tmp_path / "my-model"
    shutil.copytree(Path(__file__).parent / "fixtures" / "models" / "FLUX.1-dev", folder)
    assert main(["probe", "--model-path", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "diffusers backend" in err and len(err.strip().splitlines()) == 1
    assert main(["plan", "--model-path", str(folder), "--gpu-snapshot", "h200", "--model-id", "FLUX.1-dev",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dit"]["total_layers"] == 57  # 19 double + 38 single blocks
