"""The layout rules of plan/layout.py against sglang 0.5.23's own: real ServerArgs built from the
command line, validated by sglang's _validate_parallelism / _validate_cfg_parallel, and the plan's
layout written through the contract's apply_changes (issue 20)."""
import dataclasses

import pytest

from sglang_autoperf.sglang_adapter import contract as contract
from sglang_autoperf.plan import layout as L

# Enough heads for every degree tried here: the head rule is a runtime assertion in sglang's
# layers/usp.py, not a ServerArgs check, so it is tested by hand in test_layout.py.
MANY_HEADS = 48


def _flags(lay: L.Layout) -> list[str]:
    """The layout as a user types it (sglang's CLI; --cfg-parallel-size supersedes the bool)."""
    return ["--cfg-parallel-size", str(lay.cfg), "--ulysses-degree", str(lay.ulysses), "--ring-degree",
            str(lay.ring), "--kv-gather-degree", str(lay.kv_gather), "--use-fsdp-inference",
            "true" if lay.fsdp else "false", "--attention-backend", "fa"]


def _sglang_refusal(server_args, n: int, lay: L.Layout) -> str | None:
    try:
        args = server_args("--num-gpus", str(n), *_flags(lay))
    except ValueError as exc:  # _adjust_parallelism raises some itself
        return str(exc)
    return contract.layout_rejection(args)


def _layout_of(args) -> L.Layout:
    kv = args.kv_gather_degree
    return L.Layout(args.cfg_parallel_degree, 1 if kv > 1 else args.ulysses_degree, args.ring_degree, kv,
                    bool(args.use_fsdp_inference))


def test_layout_fields_are_server_args_fields_the_plan_may_change():
    from sglang.multimodal_gen.runtime.server_args import ServerArgs

    fields = {f.name for f in dataclasses.fields(ServerArgs)}
    assert set(L.LAYOUT_FIELDS) <= fields
    assert set(L.LAYOUT_FIELDS) <= set(contract.PLANNED_FIELDS)
    assert {"cfg_parallel_degree", "sp_degree"} <= fields


def test_ring_backends_are_sglangs():
    from sglang.multimodal_gen.runtime.server_args import server_args as sa_module

    assert tuple(contract.RING_ATTENTION_BACKENDS) == tuple(sa_module.RING_CAPABLE_ATTENTION_BACKENDS)


@pytest.mark.parametrize("n", [2, 4])
def test_validity_agrees_with_sglangs_validation(server_args, n):
    # every layout the model enumerates, plus layouts it must refuse for sglang's reasons
    wrong = [L.Layout(1, 1, 1, 1), L.Layout(2, n, 1, 1), L.Layout(1, 2, 1, n // 2 if n > 2 else 2),
             L.Layout(1, n, 2, 1)]
    for lay in L.enumerate_layouts(n) + wrong:
        mine = L.layout_problem(lay, n, MANY_HEADS, runs_cfg=True, attention_backend="fa")
        theirs = _sglang_refusal(server_args, n, lay)
        assert (mine is None) == (theirs is None), (lay.label, n, mine, theirs)


def test_cfg_parallel_on_a_distilled_pipeline_is_refused_by_both(server_args):
    # sglang refuses CFG-parallel where the pipeline cannot split CFG ranks; the model refuses it
    # wherever the request runs one pass (a guidance-distilled family), which covers that case.
    assert L.layout_problem(L.Layout(2, 1, 1, 1), 2, MANY_HEADS, runs_cfg=False) is not None


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("cfg_flag", [[], ["--enable-cfg-parallel", "false"]])
def test_sglangs_default_layout_is_what_the_model_assumes(server_args, n, cfg_flag):
    args = server_args("--num-gpus", str(n), *cfg_flag)
    current = contract.current_settings(args)
    assert L.layout_from_settings(current, n, runs_cfg=True) == _layout_of(args)
    if not cfg_flag:  # nothing set at all: the model derives the same from empty settings
        assert L.layout_from_settings({}, n, runs_cfg=True) == _layout_of(args)


@pytest.mark.parametrize("n", [2, 4])
def test_every_valid_layout_written_by_the_plan_is_what_sglang_runs(server_args, n):
    """From sglang's own default, write only what differs (as the planner's changes do); sglang's
    re-derivation must land on exactly that layout and accept it."""
    for lay in L.enumerate_layouts(n):
        if L.layout_problem(lay, n, MANY_HEADS, runs_cfg=True, attention_backend="fa") is not None:
            continue
        args = server_args("--num-gpus", str(n), "--attention-backend", "fa")
        current = contract.current_settings(args)
        changes = [{"setting": k, "before": current.get(k), "after": v, "reason": "layout test"}
                   for k, v in lay.settings().items() if current.get(k) != v]
        contract.apply_changes(args, changes, pinned=set())
        assert contract.layout_rejection(args) is None, lay.label
        assert _layout_of(args) == lay, (lay.label, _layout_of(args))
        assert args.sp_degree == lay.sp


def test_a_user_sp_flag_pins_kv_gather(server_args):
    pinned = contract.pinned_flags(server_args("--num-gpus", "2", "--ulysses-degree", "2"))
    assert pinned["kv_gather_degree"] == 1
    assert pinned["ulysses_degree"] == 2
    assert not L.matches_pins(L.Layout(1, 1, 1, 2), pinned)
    assert L.matches_pins(L.Layout(1, 2, 1, 1), pinned)


@pytest.mark.parametrize("n,flags", [(2, []), (4, []), (2, ["--enable-cfg-parallel", "false"]),
                                     (4, ["--ulysses-degree", "2"])])
def test_the_plans_layout_lands_in_sglang_as_planned(server_args, demo_model, n, flags):
    """make_plan on the demo model (2 heads) with sglang's own current values and pins, its changes
    written through apply_changes: sglang accepts the result, it runs the planned layout, and no flag
    the user set moved."""
    import dataclasses as dc
    from pathlib import Path

    from sglang_autoperf.plan.planner import make_plan
    from sglang_autoperf.probe.gpu import profile_from_snapshot
    from sglang_autoperf.probe.model import probe_model
    from sglang_autoperf.probe.workload import workload_for

    snap = profile_from_snapshot(Path(__file__).parent / "fixtures" / "nvml" / "nvml-2x-h200-141gb-2026-11-27.json")
    gpu = dc.replace(snap, devices=tuple(dc.replace(snap.devices[0], index=i) for i in range(n)))
    args = server_args("--num-gpus", str(n), *flags)
    before = {k: getattr(args, k) for k in ("enable_cfg_parallel", "ulysses_degree")}
    m = probe_model(demo_model)
    plan = make_plan(gpu, m, workload_for(m, 832, 480, num_frames=17), contract.pinned_flags(args),
                     contract.current_settings(args), None, num_gpus=n)
    contract.apply_changes(args, [dc.asdict(c) for c in plan.changes], pinned=set())
    assert contract.layout_rejection(args) is None
    planned = L.layout_from_settings(plan.settings, n, runs_cfg=True)
    assert _layout_of(args) == planned
    assert L.layout_problem(planned, n, m.dit.num_heads, runs_cfg=True) is None
    if flags:
        pinned_name = "enable_cfg_parallel" if "--enable-cfg-parallel" in flags else "ulysses_degree"
        assert getattr(args, pinned_name) == before[pinned_name]
