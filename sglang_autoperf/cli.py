"""`sglang-autoperf`: demo-model / probe / plan / explain. Exit code 2 on bad input."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_demo_model(args) -> int:
    from sglang_autoperf.demo_model import main_build

    return main_build(args.dir)


def _gpu_profile(args):
    from sglang_autoperf.probe.gpu import probe_gpus, profile_from_snapshot

    if args.gpu_snapshot:
        return profile_from_snapshot(args.gpu_snapshot)
    return probe_gpus()


def _cmd_probe(args) -> int:
    from sglang_autoperf.probe.gpu import format_gpu_table, gpu_profile_to_dict
    from sglang_autoperf.probe.model import format_model_table, model_profile_to_dict, probe_model

    gpu = _gpu_profile(args)
    model = probe_model(args.model_path) if args.model_path else None
    if args.json:
        out = {"gpu": gpu_profile_to_dict(gpu)}
        if model is not None:
            out["model"] = model_profile_to_dict(model)
        print(json.dumps(out, indent=1, default=str))
    else:
        print(format_gpu_table(gpu))
        if model is not None:
            print()
            print(format_model_table(model))
    return 0


def _cmd_plan(args) -> int:
    from sglang_autoperf.plan.budget import parse_vram_budget
    from sglang_autoperf.plan.planner import format_plan, make_plan
    from sglang_autoperf.probe.model import probe_model
    from sglang_autoperf.probe.workload import workload_for

    gpu = _gpu_profile(args)
    model = probe_model(args.model_path)
    if not gpu.has_gpu:
        raise _InputError(f"no GPU to plan for ({gpu.no_gpu_reason}); pass --gpu-snapshot FILE")
    num_gpus = args.num_gpus or 1
    if num_gpus > len(gpu.devices):
        raise _InputError(f"--num-gpus {num_gpus}: the GPU profile ({gpu.source}) has {len(gpu.devices)} GPU(s)")
    free = min(d.memory_free_bytes for d in gpu.devices)
    budget = parse_vram_budget(args.vram_budget, free) if args.vram_budget else None
    # Omitted sizes take the family's usual request (0 and negatives are refused by the parser).
    if model.is_video:
        width, height, frames = args.width or 832, args.height or 480, args.num_frames or 81
    else:
        width, height, frames = args.width or 1024, args.height or 1024, 1
    workload = workload_for(model, width, height, num_frames=frames, steps=args.steps)
    pinned = {}
    plan = make_plan(
        gpu=gpu,
        model=model,
        workload=workload,
        pinned=pinned,
        current={"num_gpus": num_gpus},
        budget_bytes=budget,
        lossy=args.lossy,
        allow_compile=args.compile,
        performance_mode=args.performance_mode,
        num_gpus=num_gpus,
        platform="cuda",
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=1, default=str))
    else:
        print(format_plan(plan))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sglang-autoperf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-model", help="write a tiny random-weight Wan2.1-T2V model (diffusers layout)")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_demo_model)

    p = sub.add_parser("probe", help="print what the GPU and the model folder say, before any weight loads")
    p.add_argument("--model-path")
    p.add_argument("--gpu-snapshot", help="a recorded NVML snapshot (JSON) instead of the live GPU")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("plan", help="dry run: the settings the plugin would choose, with reasons")
    p.add_argument("--model-path", required=True)
    p.add_argument("--gpu-snapshot")
    p.add_argument("--vram-budget", help="24GiB, 24000MiB or a fraction of free memory (0.5)")
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--num-frames", type=_positive_int)
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--num-gpus", type=_positive_int)
    p.add_argument("--performance-mode", default="auto", choices=("auto", "speed", "memory", "manual"))
    p.add_argument("--lossy", action="store_true", help="allow lossy options (as SGLANG_AUTOPERF_LOSSY=1)")
    p.add_argument("--compile", action="store_true",
                   help="let the plan turn torch.compile on (as SGLANG_AUTOPERF_COMPILE=1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("explain", help="the last calibration, from the tuning cache")
    p.add_argument("--json", action="store_true")
    p.add_argument("--png", help="write a copy-vs-compute timeline to this PNG (needs matplotlib)")
    p.add_argument("--cache-dir")
    p.set_defaults(func=_cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed in one line)
        return exc.code if isinstance(exc.code, int) else 2
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
    except input_errors as exc:
        one_line = " ".join(str(exc).splitlines())  # a wrapped library message stays one line
        print(f"sglang-autoperf {args.command}: error: {one_line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
