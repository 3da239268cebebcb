"""`sglang-autoperf`: demo-model / probe / plan / explain. Exit codes: 0 ok, 2 bad input, 3 the plan does not
fit the VRAM budget."""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3  # `plan`: not even the smallest placement fits the VRAM budget


def _cmd_demo_model(args) -> int:
    from sglang_autoperf.demo_model import main_build

    return main_build(args.dir)


def _gpu_profile(args):
    from sglang_autoperf.probe.gpu import bundled_profile_path, probe_gpus, profile_from_snapshot

    if args.gpu_snapshot:
        return profile_from_snapshot(bundled_profile_path(args.gpu_snapshot))
    return probe_gpus()


def _bundled_names() -> str:
    from sglang_autoperf.probe.gpu import bundled_profiles

    return ", ".join(sorted(bundled_profiles()))


def _format_no_gpu(gpu) -> str:
    """The GPU table's facts in words when there is no GPU: why, the host, and what to do instead."""
    from sglang_autoperf.probe.gpu import format_gpu_table

    lines = [f"no NVIDIA GPU visible: {gpu.no_gpu_reason}"]
    # The table's first line repeats the reason; with no NVML ("source none") its driver line says nothing.
    rest = format_gpu_table(gpu).splitlines()[1:]
    lines += [line for line in rest if not (gpu.source == "none" and line.startswith("driver "))]
    lines.append(f"to plan for a GPU anyway: sglang-autoperf plan --model-path DIR --gpu-snapshot NAME "
                 f"(bundled: {_bundled_names()}) or a snapshot file")
    return "\n".join(lines)


def _cmd_probe(args) -> int:
    from sglang_autoperf.probe.gpu import format_gpu_table, gpu_profile_to_dict
    from sglang_autoperf.probe.model import format_model_table, model_profile_to_dict, probe_model

    gpu = _gpu_profile(args)
    model = probe_model(args.model_path, model_id=args.model_id) if args.model_path else None
    if args.json:
        out = {"gpu": gpu_profile_to_dict(gpu)}
        if model is not None:
            out["model"] = model_profile_to_dict(model)
        print(json.dumps(out, indent=1, default=str))
    else:
        print(format_gpu_table(gpu) if gpu.has_gpu else _format_no_gpu(gpu))
        if model is not None:
            print()
            print(format_model_table(model))
    return 0


def _workload_origin(args, model) -> dict:
    """Where each number of the planned request came from (the numbers are startup's own defaults)."""
    origin = {k: "from you" if given else "default"
              for k, given in (("width", args.width), ("height", args.height), ("frames", args.num_frames))}
    if not model.is_video:
        origin["frames"] = "an image model"
    origin["steps"] = "from you" if args.steps else "the model's default"
    origin["batch"] = "default"
    guidance = "" if model.default_guidance_scale is None else f"guidance {model.default_guidance_scale}, "
    origin["cfg"] = f"the model's default: {guidance}CFG {'on' if model.cfg_default else 'off'}"
    return origin


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _workload_line(w, origin: dict) -> str:
    return (f"workload: width {w.width} ({origin['width']}), height {w.height} ({origin['height']}), "
            f"{_count(w.num_frames, 'frame', 'frames')} ({origin['frames']}), "
            f"{_count(w.steps, 'step', 'steps')} ({origin['steps']}), batch {w.batch_size} ({origin['batch']}), "
            f"{_count(w.cfg_passes, 'CFG pass', 'CFG passes')} per step ({origin['cfg']})")


def _verdict(plan, budget_text: str | None) -> tuple[bool, str]:
    """Whether the plan fits its budget, decided from the plan's own numbers, and the line saying so."""
    from sglang_autoperf.units import GiB

    p = plan.predicted
    if not p.budget_bytes:  # the planner placed nothing (no DiT); its notes say why
        return True, "verdict: nothing to place (" + "; ".join(plan.notes) + ")"
    whose = f"--vram-budget {budget_text}" if budget_text else "the GPU's free memory"
    need, budget = p.vram_bytes / GiB, p.budget_bytes / GiB
    if p.vram_bytes > p.budget_bytes:
        return False, (f"verdict: does not fit the budget: the smallest placement needs {need:.1f} GiB, "
                       f"the budget is {budget:.1f} GiB ({whose})")
    return True, f"verdict: fits: {need:.1f} of {budget:.1f} GiB ({whose})"


def _dry_run_context(args):
    """The RunContext a run of `sglang generate` with these values and no other flag would hand
    startup (the CLI does not build sglang's ServerArgs: ~20 s of imports)."""
    from sglang_autoperf.startup import RunContext

    num_gpus = args.num_gpus or 1
    return RunContext(model_path=args.model_path, platform="cuda", num_gpus=num_gpus, base_gpu_id=0,
                      performance_mode=args.performance_mode, pinned={}, current={"num_gpus": num_gpus},
                      width=args.width, height=args.height, num_frames=args.num_frames, steps=args.steps,
                      expected_requests=1, model_id=args.model_id)


def _cmd_plan(args) -> int:
    """The plan a real run would make (startup's own planning, with the tuning cache decision)."""
    from sglang_autoperf.plan.planner import Plan, format_plan
    from sglang_autoperf.probe.model import probe_model
    from sglang_autoperf.probe.workload import Workload
    from sglang_autoperf.settings import Settings, default_cache_dir
    from sglang_autoperf.sglang_adapter.contract import dry_run_identity
    from sglang_autoperf.startup import apply_cached_tuning, plan_startup

    gpu = _gpu_profile(args)
    if not gpu.has_gpu:
        raise _InputError(f"no GPU to plan for ({gpu.no_gpu_reason}); pass --gpu-snapshot NAME "
                          f"(bundled: {_bundled_names()}) or a snapshot file")
    model = probe_model(args.model_path, model_id=args.model_id)  # its errors: the CLI's one line, exit 2
    ctx = _dry_run_context(args)
    settings = Settings(enabled=True, lossy=args.lossy, compile=args.compile, vram_budget=args.vram_budget,
                        cache_dir=str(default_cache_dir()))
    startup = plan_startup(ctx, settings, gpu=gpu)
    if not startup.active:
        raise _InputError(startup.reason)
    identity = dry_run_identity(ctx.num_gpus, ctx.performance_mode)
    if identity is not None:
        apply_cached_tuning(startup, ctx, settings, identity)
    else:
        startup.plan["notes"].append("tuning cache not consulted: on several GPUs the layout it is keyed by is "
                                     "sglang's derivation at startup")
    plan, workload = Plan.from_dict(startup.plan), Workload(**startup.workload)
    fits, verdict = _verdict(plan, args.vram_budget)
    origin = _workload_origin(args, model)
    if args.json:
        doc = {"verdict": "fits" if fits else "does not fit the budget", "verdict_line": verdict,
               "workload": {**startup.workload, "origin": origin}, **plan.to_dict()}
        print(json.dumps(doc, indent=1, default=str))
    else:
        print(verdict)
        print(_workload_line(workload, origin))
        print(format_plan(plan))
    return 0 if fits else EXIT_DOES_NOT_FIT


def _cmd_explain(args) -> int:
    from sglang_autoperf.report import explain

    return explain(json_output=args.json, png=args.png, cache_dir=args.cache_dir)


class _InputError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the one line every other input error gets (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


_DESCRIPTION = ("Probe the GPU and a model folder, plan SGLang Diffusion's offload/residency/compile settings, "
                "and explain what a run tuned, without starting sglang.")
_EPILOG = "exit codes: 0 ok, 2 bad input (one line on stderr), 3 `plan`: nothing fits the VRAM budget"


_MODEL_ID_HELP = ("as sglang's --model-id: the registered model a neutrally named folder is (e.g. FLUX.1-dev); "
                  "default: what sglang matches from the folder")


def build_parser() -> argparse.ArgumentParser:
    snapshot_help = (f"a GPU profile instead of the live GPU: a bundled name ({_bundled_names()}; "
                     "case-insensitive) or a recorded NVML snapshot file (JSON)")
    parser = _Parser(prog="sglang-autoperf", description=_DESCRIPTION, epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo-model", help="write a tiny random-weight Wan2.1-T2V model (diffusers layout)")
    p.add_argument("dir", help="folder to write the model into (created if missing)")
    p.set_defaults(func=_cmd_demo_model)

    p = sub.add_parser("probe", help="print what the GPU and the model folder say, before any weight loads")
    p.add_argument("--model-path", metavar="DIR", help="a diffusers-layout model folder to read (configs and "
                                                      "safetensors headers only)")
    p.add_argument("--gpu-snapshot", metavar="NAME|FILE", help=snapshot_help)
    p.add_argument("--model-id", metavar="ID", help=_MODEL_ID_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("plan", help="dry run: the settings the plugin would choose, with reasons "
                                    "(exit 3 when nothing fits the VRAM budget)")
    p.add_argument("--model-path", metavar="DIR", required=True, help="the diffusers-layout model folder to plan")
    p.add_argument("--model-id", metavar="ID", help=_MODEL_ID_HELP)
    p.add_argument("--gpu-snapshot", metavar="NAME|FILE", help=snapshot_help)
    p.add_argument("--vram-budget", metavar="SIZE",
                   help="cap per GPU: 24GiB, 24000MiB, 24GB or a fraction of free memory (0.5); default: all free")
    p.add_argument("--width", type=_positive_int, metavar="W", help="request width (default 832 video, 1024 image)")
    p.add_argument("--height", type=_positive_int, metavar="H", help="request height (default 480 video, 1024 image)")
    p.add_argument("--num-frames", type=_positive_int, metavar="F", help="frames per request (default 81; images: 1)")
    p.add_argument("--steps", type=_positive_int, metavar="N", help="denoising steps (default: the model's own)")
    p.add_argument("--num-gpus", type=_positive_int, metavar="N",
                   help="GPUs the server would use, as sglang's --num-gpus (default 1)")
    p.add_argument("--performance-mode", default="auto", choices=("auto", "speed", "memory", "manual"),
                   help="as sglang's --performance-mode: auto/speed fastest within the budget, memory least "
                        "VRAM with copies hidden, manual report only (default auto)")
    p.add_argument("--lossy", action="store_true", help="allow lossy options (as SGLANG_AUTOPERF_LOSSY=1)")
    p.add_argument("--compile", action="store_true",
                   help="let the plan turn torch.compile on (as SGLANG_AUTOPERF_COMPILE=1)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (with verdict and workload)")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("explain", help="the last calibration, from the tuning cache")
    p.add_argument("--json", action="store_true", help="print the cache entry as JSON")
    p.add_argument("--png", metavar="FILE", help="write a copy-vs-compute timeline to this PNG (needs matplotlib)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the tuning cache to read (default: $SGLANG_AUTOPERF_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/sglang-autoperf)")
    p.set_defaults(func=_cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed in one line)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if args.command is None:  # bare `sglang-autoperf`: what it can do, not a usage error
        build_parser().print_help()
        return 0
    from sglang_autoperf.probe.model import ModelProbeError

    input_errors: tuple[type[BaseException], ...] = (ModelProbeError, _InputError, FileNotFoundError)
    try:
        from sglang_autoperf.plan.budget import BudgetError

        input_errors += (BudgetError,)
    except ImportError:
        pass
    try:
        from sglang_autoperf.probe.gpu import SnapshotError

        input_errors += (SnapshotError,)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `| head` closed stdout: the reader took what it wanted, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except input_errors as exc:
        one_line = " ".join(str(exc).splitlines())  # a wrapped library message stays one line
        print(f"sglang-autoperf {args.command}: error: {one_line}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
