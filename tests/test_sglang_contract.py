"""Contract tests: what sglang_adapter/contract.py (and the binding over it) assumes of sglang 0.5.23, checked against the installed
sglang (hook targets, ServerArgs fields and derivations, LayerwiseOffloadManager's attributes),
and that the main process and the workers key the tuning cache alike."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import pickle
import sys

import pytest

from sglang_autoperf.sglang_adapter import contract as sa

TARGETS = [name for name in dir(sa) if name.startswith("TARGET_")]


@pytest.mark.parametrize("name", TARGETS)
def test_every_hook_target_resolves_in_the_installed_sglang(name):
    assert callable(sa.resolve_target(getattr(sa, name)))


def test_the_fallback_targets_resolve():
    for target, _kind in sa.CPU_FALLBACKS:
        assert callable(sa.resolve_target(target))


def test_every_field_the_adapter_names_is_a_serverargs_field():
    from sglang.multimodal_gen.runtime.server_args import ServerArgs

    fields = {f.name for f in dataclasses.fields(ServerArgs)}
    named = set(sa.PLANNED_FIELDS) | set(sa.PARALLEL_DERIVED) | {"sp_split_auto", "layerwise_offload_components"}
    named |= {flag for flags in sa.PLACEMENT_KNOB_FLAGS.values() for flag in flags}
    named |= {alias for aliases in sa.PARALLEL_ALIASES.values() for alias in aliases}
    assert named <= fields, sorted(named - fields)
    for method in ("_adjust_parallelism", "_validate_parallelism", "_parse_component_value_map",
                   "is_arg_explicitly_set", "_adjust_layerwise_offload_components", "load_config_file"):
        assert callable(getattr(ServerArgs, method)), method


def test_the_manager_has_what_the_live_path_reads_and_writes():
    """sglang's real LayerwiseOffloadManager, built on the CPU (it stays disabled without CUDA; the
    GPU-marked tests/gpu/test_live_contract.py changes placements on an enabled one)."""
    import torch
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(6))
    manager = lo.LayerwiseOffloadManager(model, layers_attr_str="blocks", num_layers=6, enabled=True,
                                         prefetch_size=2, resident_layers=1, residency_policy="strided")
    assert sa.manager_setting(manager) == {"prefetch_layers": 2, "resident_layers": 1, "policy": "strided",
                                           "num_layers": 6}
    assert sa.manager_layer_list_name(manager) == "blocks"
    assert len(sa.manager_layer_modules(manager)) == 6
    for attr in ("_streamed_order", "_resident_set", "residency_lifetime", "model"):
        assert hasattr(manager, attr), attr
    for method in ("release_all", "prepare_for_next_req", "prefetch_layer"):
        assert callable(getattr(lo.LayerwiseOffloadManager, method)), method
    # the streamed order sglang computes is what set_manager_placement writes back
    assert list(manager._streamed_order) == list(lo.compute_streamed_layers(
        num_layers=6, resident_layers=1, policy="strided"))
    assert sa.residency_policies() == ("leading", "strided")


@pytest.mark.parametrize("mode", ["auto", "memory", "speed"])
def test_the_dry_run_identity_is_the_one_a_real_run_builds(server_args, mode):
    """`sglang-autoperf plan` keys the tuning cache without building ServerArgs: on one GPU its
    identity must be what a run with the same flags builds; on two, sglang's own derivation decides
    the layout (CFG-parallel off runs Ulysses 2), so the dry run must not guess it."""
    real = sa.worker_identity(server_args("--performance-mode", mode))
    assert sa.dry_run_identity(1, mode) == dict(real, pinned=[])
    args = server_args("--num-gpus", "2")
    sa.apply_changes(args, [{"setting": "enable_cfg_parallel", "before": True, "after": False, "reason": "t"}],
                     pinned=set())
    assert sa.worker_identity(args)["layout"] != sa.layout_text(tp=1, ulysses=1, ring=1, cfg=1, dp=1)
    assert sa.dry_run_identity(2, mode) is None


def test_the_streamed_order_copied_for_the_cli_is_sglangs():
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    for n in range(1, 70):
        for resident in range(-1, n + 2):
            for policy in sa.residency_policies():
                assert sa.streamed_layers_without_sglang(n, resident, policy) == tuple(
                    lo.compute_streamed_layers(num_layers=n, resident_layers=resident, policy=policy)), (n, resident)


def _two_list_dit():
    """A FLUX-shaped pair of ModuleLists (19 double, 38 single blocks) on sglang's own mixin."""
    import torch
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    class Dit(lo.LayerwiseOffloadableModuleMixin, torch.nn.Module):
        layer_names = ["transformer_blocks", "single_transformer_blocks"]

        def __init__(self):
            torch.nn.Module.__init__(self)
            self.transformer_blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(19))
            self.single_transformer_blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(38))

    return Dit()


@pytest.mark.parametrize("resident,prefetch", [("0", "0.0"), ("0.5", "0.1"), ("0.01", "0.99"), ("20", "2"),
                                               ("3", "40"), ("0.3", "1")])
@pytest.mark.parametrize("policy", ["leading", "strided"])
def test_per_list_counts_are_what_sglangs_configure_builds(server_args, resident, prefetch, policy):
    """sglang turns the flags into per-list counts inline in configure_layerwise_offload; the
    contract's copy of that rule must build the same managers (real ServerArgs, real mixin, CPU)."""
    args = server_args("--dit-layerwise-resident-layers", resident, "--dit-offload-prefetch-size", prefetch,
                       "--dit-layerwise-residency-policy", policy)
    dit = _two_list_dit()
    dit.configure_layerwise_offload(args)
    managers = dit.layerwise_offload_managers
    counts = [m.num_layers for m in managers]
    assert counts == [19, 38]
    assert sa.resident_per_group(counts, float(resident)) == tuple(m.resident_layers for m in managers)
    assert sa.prefetch_per_group(counts, float(prefetch)) == tuple(m.prefetch_size for m in managers)
    for m in managers:
        assert sa.streamed_layers(m.num_layers, m.resident_layers, policy) == tuple(m._streamed_order)


# --- a real ServerArgs ----------------------------------------------------------------------------

def _consistent(a) -> None:
    assert a.cfg_parallel_degree == (2 if a.enable_cfg_parallel else 1)
    assert a.tp_size * a.dp_size * a.cfg_parallel_degree * a.sp_degree == a.num_gpus
    assert a.sp_degree == (a.ulysses_degree or 1) * (a.ring_degree or 1)


@pytest.mark.parametrize("num_gpus", [2, 4])
@pytest.mark.parametrize("cfg_parallel", [True, False])
def test_a_planned_cfg_parallel_is_derived_again_by_sglang(server_args, num_gpus, cfg_parallel):
    """sglang auto-enables CFG parallel for the demo Wan on 2+ GPUs and derives the degrees from
    it; a plan that turns it off (or on) must leave no degree behind (issue 14, finding 6:
    enable_cfg_parallel=False with cfg_parallel_degree=2 before)."""
    args = server_args("--num-gpus", str(num_gpus))
    sa.apply_changes(args, [{"setting": "enable_cfg_parallel", "before": args.enable_cfg_parallel,
                             "after": cfg_parallel, "reason": "r"}], pinned=set())
    assert args.enable_cfg_parallel is cfg_parallel
    _consistent(args)


def test_a_user_cfg_parallel_size_pins_the_planned_flag(server_args):
    args = server_args("--num-gpus", "2", "--cfg-parallel-size", "2")
    applied = sa.apply_changes(args, [{"setting": "enable_cfg_parallel", "before": True, "after": False,
                                       "reason": "r"}], pinned=set())
    assert applied == [] and args.enable_cfg_parallel is True and args.cfg_parallel_degree == 2


def test_startup_and_worker_build_the_same_key(server_args, tmp_path, monkeypatch):
    """The main process looks the cache up with the identity of the ServerArgs as the plan leaves
    them; a worker (which receives them pickled) must build the same identity, on 2 GPUs where the
    plan changes the layout."""
    from sglang_autoperf.sglang_adapter import binding as binding
    from sglang_autoperf.settings import Settings
    from sglang_autoperf.startup import StartupPlan

    args = server_args("--num-gpus", "2", "--dit-offload-prefetch-size", "2")
    seen = {}
    plan = StartupPlan(active=True, reason="planned", model_path=args.model_path, platform="cuda", pinned=[],
                       changes=[{"setting": "enable_cfg_parallel", "before": True, "after": False, "reason": "r"},
                                {"setting": "dit_layerwise_offload", "before": False, "after": True, "reason": "r"}])
    monkeypatch.setattr(binding, "plan_startup", lambda ctx, settings: plan)
    monkeypatch.setattr(binding, "apply_cached_tuning",
                        lambda startup, ctx, settings, identity: seen.setdefault("identity", identity))
    monkeypatch.setattr(binding.RUN, "settings", Settings(enabled=True, cache_dir=str(tmp_path)))
    before = sa.worker_identity(args)
    binding._plan_and_apply(args)
    worker_args = pickle.loads(pickle.dumps(args))  # as sglang ships ServerArgs to a worker
    assert sa.worker_identity(worker_args, rank=1) == dict(seen["identity"], rank=1)
    assert seen["identity"]["layout"] != before["layout"]  # the plan did change the layout
    assert "dit_offload_prefetch_size=2.0" in seen["identity"]["pinned_placement"]


# --- the request shape, as sglang's own parser read it -------------------------------------------

def test_generate_hints_come_from_sglangs_own_generate_cmd(demo_model, monkeypatch, tmp_path):
    """sglang's real generate_cmd parses the flags and the --config file; the plan, called below it
    (launch_server runs inside DiffGenerator.from_pretrained), reads what it parsed."""
    from sglang.multimodal_gen.runtime.entrypoints.cli import generate as gen
    config = tmp_path / "run.json"
    config.write_text('{"num_frames": 9}')
    argv = ["--model-path", str(demo_model), "--prompt", "p", "--width", "640", "--height", "480",
            "--num-inference-steps", "7"]
    monkeypatch.setattr(sys, "argv", ["sglang", "generate", *argv])  # sglang reads explicit flags there
    parser = gen.add_multimodal_gen_generate_args(argparse.ArgumentParser())  # as sglang.cli.generate does
    args, unknown = parser.parse_known_args(argv)
    args.config = str(config)  # as `--config` leaves it for generate_cmd
    seen = {}

    class Stop(Exception):
        pass

    def from_pretrained(**kwargs):  # where launch_server and our plan run
        request = sa.generate_cmd_request()
        seen.update(sa.workload_hints(kwargs["server_args"], request), one_shot=sa.one_shot_requests(request))
        raise Stop
    monkeypatch.setattr(gen, "DiffGenerator", type("DiffGenerator", (), {"from_pretrained": staticmethod(from_pretrained)}))
    with pytest.raises(Stop):
        gen.generate_cmd(args, unknown)
    assert seen == {"width": 640, "height": 480, "steps": 7, "num_frames": 9, "one_shot": 1}


def test_the_host_programs_argv_is_never_read(monkeypatch):
    """Under the Python API sys.argv is the host program's: `--wid 2048` once became a width."""
    monkeypatch.setattr(sys, "argv", ["host.py", "generate", "--wid", "2048", "--num-frames", "99"])
    request = sa.generate_cmd_request()
    assert request is None and sa.workload_hints(object(), request) == {}
    assert sa.one_shot_requests(request) is None


def test_pinned_placement_knobs_from_flag_names():
    assert sa.pinned_placement_knobs(["dit_offload_prefetch_size", "model_path"]) == {"prefetch_layers"}
    assert sa.pinned_placement_knobs(["layerwise_residency_policy"]) == {"policy"}
    assert sa.pinned_placement_knobs([]) == frozenset()
    assert copy.copy(sa.PLACEMENT_KNOB_FLAGS).keys() == {"resident_layers", "prefetch_layers", "policy"}


# --- the live path on sglang's real LayerwiseOffloadManager ----------------------------------------

class _Stream:
    def wait_stream(self, stream) -> None:
        return None

    def wait_event(self, event) -> None:
        return None


class _Event:
    def record(self, stream=None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


class _HostDevice:
    """The device module sglang's manager asks for, answering for the host: the double sglang's own
    unit tests use (test/unit/test_layerwise_offload.py) so that an enabled manager exists without
    CUDA. Copies become host-to-host copies; everything else runs sglang's code."""

    Stream, Event = _Stream, _Event

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def current_stream() -> _Stream:
        return _Stream()

    @staticmethod
    def stream(stream):
        import contextlib

        return contextlib.nullcontext()


def use_host_device(monkeypatch):
    """sglang's layerwise offload module, its device module answering for the host (_HostDevice)."""
    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    monkeypatch.setattr(lo.torch, "get_device_module", lambda: _HostDevice)
    monkeypatch.setattr(lo.current_platform, "device_type", "cpu")
    return lo


@pytest.fixture
def real_manager(monkeypatch):
    import torch

    lo = use_host_device(monkeypatch)

    class Dit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(6))

        def forward(self, x):
            for block in self.blocks:
                x = torch.tanh(block(x))
            return x

    def build(lifetime="forward"):
        torch.manual_seed(0)
        dit, x = Dit(), torch.randn(2, 8)
        with torch.no_grad():
            reference = dit(x).clone()
        manager = lo.LayerwiseOffloadManager(dit, layers_attr_str="blocks", num_layers=6, enabled=True,
                                             pin_cpu_memory=False, prefetch_size=2, resident_layers=1,
                                             residency_policy="strided", residency_lifetime=lifetime)
        assert manager.enabled

        def forward_matches() -> bool:
            with torch.no_grad():
                return torch.equal(dit(x), reference)
        return manager, forward_matches

    return build


def test_a_live_placement_change_on_the_real_manager_is_lossless(real_manager):
    manager, forward_matches = real_manager()
    assert forward_matches()
    sa.set_manager_placement(manager, prefetch_layers=3, resident_layers=4, policy="leading")
    assert sa.manager_setting(manager) == {"prefetch_layers": 3, "resident_layers": 4, "policy": "leading",
                                           "num_layers": 6}
    assert sorted(manager._resident_set) == [0, 1, 2, 3] and list(manager._streamed_order) == [4, 5]
    assert forward_matches() and forward_matches()
    assert sa.manager_layer_bytes(manager, 0) == (8 * 8 + 8) * 4  # fp32 Linear(8, 8): weight + bias


def test_the_tuner_on_the_real_manager_keeps_pinned_knobs_and_restores_on_failure(real_manager, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from sglang_autoperf.measure import live
    from sglang_autoperf.trace import Placement
    from sglang_autoperf.settings import Settings

    manager, forward_matches = real_manager()
    identity = {"rank": 0, "performance_mode": "auto", "pinned": ["dit_offload_prefetch_size"]}
    tuner = live.WorkerTuner(SimpleNamespace(), Settings(enabled=True, cache_dir=str(tmp_path)),
                             {"transformer": [manager]}, identity, monitor=SimpleNamespace(detach=lambda: None),
                             cache=object(), fixed=sa.pinned_placement_knobs(identity["pinned"]),
                             policies=sa.residency_policies())
    start = tuner.placement()
    tuner.apply(Placement(5, 6, "leading"))
    assert tuner.placement() == Placement(5, 2, "leading") and forward_matches()
    # an error of ours mid-calibration: _disable puts sglang's start placement back
    tuner.calibration = SimpleNamespace(baseline=start)
    run = live.LiveRun()
    run.install(tuner)
    run.disable("test", RuntimeError("ours"))
    assert run.tuner is None and tuner.placement() == start and forward_matches()


def test_a_permanent_manager_refuses_live_changes_and_is_detected_first(real_manager):
    manager, forward_matches = real_manager("permanent")
    assert "permanent" in sa.managers_live_blocker({"transformer": [manager]})
    with pytest.raises(RuntimeError, match="residency-lifetime forward"):  # what the H200 run raised mid-request
        sa.set_manager_placement(manager, prefetch_layers=2, resident_layers=3, policy="leading")
    assert forward_matches()


def _agreement_rank(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from sglang_autoperf.measure import live
    from sglang_autoperf.trace import Placement

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = [Placement(rank, 2, "leading")] if rank else [Placement(3, 3, "leading"), Placement(0, 8, "leading")]
        out.put((rank, live._agree_on_placements(mine), live._agree_on_times([100.0 + rank, 90.0 - rank]),
                 live._agree_any(rank == 1)))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_candidates_times_and_stopping():
    """Two processes in a gloo group (sglang's workers use NCCL; the collectives are the same):
    rank 0's candidates win, a placement is as slow as its slowest rank, one rank out of time
    stops both."""
    import multiprocessing

    from conftest import free_port
    from sglang_autoperf.trace import Placement

    ctx = multiprocessing.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_agreement_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = dict((r, rest) for r, *rest in (out.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    for rank in (0, 1):
        placements, times, any_flag = results[rank]
        assert placements == [Placement(3, 3, "leading"), Placement(0, 8, "leading")]
        assert times == [101.0, 90.0] and any_flag is True


def test_model_resolution_reads_model_id_and_backend_from_real_serverargs(server_args):
    assert sa.model_resolution(server_args()) == {"model_id": None, "backend": "auto"}
    args = server_args("--model-id", "FLUX.1-dev", "--backend", "diffusers")
    assert sa.model_resolution(args) == {"model_id": "FLUX.1-dev", "backend": "diffusers"}
