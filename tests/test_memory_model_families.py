"""The startup memory model (plan/cost.py) against the peaks measured on an H200 for the two families
of issue 16 (FLUX.2-klein-4B, Z-Image-Turbo: 1024x1024, one image, no CFG) and for FLUX.1-dev, which
shares FLUX.2's activation factor (both are sglang's `flux` pipeline-config module).

cost.ACTIVATION_FACTOR was fitted to one point of each sweep (FIT_POINTS); every other measured point
checks it. Models are config-only folders holding the configs the GPU checkpoints were built from
(benchmarks/make_checkpoints.py), read by the real probe; measurements are tests/fixtures/memory/
(README there) and the FLUX.1 sweep's committed summaries.
"""
from __future__ import annotations

import functools
import inspect
import json
import sys
from pathlib import Path

import pytest

from sglang_autoperf.plan import cost
from sglang_autoperf.plan.planner import make_plan
from sglang_autoperf.probe.model import probe_model
from sglang_autoperf.probe.workload import workload_for
from sglang_autoperf.retune.lists import LayerList, ListPlacement, buffer_bytes, resident_bytes
from sglang_autoperf.retune.memory import MemoryReading, memory_correction
from sglang_autoperf.trace import Placement
from test_cost_model import h200
from test_list_candidates import ALL_RESIDENT, lists_of, recording, sweep_points
from test_model_families import IMAGE_VAE_16

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "benchmarks"))
import make_checkpoints  # noqa: E402

MEMORY = ROOT / "fixtures" / "memory"
KLEIN, KLEIN_2 = "h200-flux2-klein-4b-1024-sweep-2026-11-29.json", "h200-flux2-klein-4b-1024-sweep2-2026-11-29.json"
ZIMAGE = "h200-z-image-turbo-1024-sweep-2026-11-29.json"
# The all-streamed point each factor was fitted to (plan/cost.py says so): not a check of the fit.
FIT_POINTS = {KLEIN: "grid r0 r0", ZIMAGE: "grid r0"}
GiB = 1024**3
# A start the model under-predicts can run out of memory at its limit: at most 0.25 GiB under (the
# worst here, -0.18 GiB, is klein's leading-policy point, 0.86 GiB of fragmentation). Over-prediction
# only leaves room unused: at most 0.65 GiB (the factor 130 over-predicted every point by 2.2-3.9 GiB).
UNDER_GIB, OVER_GIB = 0.25, 0.65


def _write(folder: Path, files: dict) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data))
    return folder


@functools.lru_cache(maxsize=None)
def family_model(sweep: str, root: str):
    """The folder the sweep's checkpoint was built as, without weights: its model index, its DiT
    config (make_checkpoints' dict) and its VAE config (what that builder saved)."""
    import diffusers

    if sweep == ZIMAGE:
        name, pipeline, dit_class, dit = "Z-Image-Turbo", "ZImagePipeline", "ZImageTransformer2DModel", \
            make_checkpoints.Z_IMAGE_TURBO
        vae = IMAGE_VAE_16
    else:  # diffusers' AutoencoderKLFlux2 defaults, as build_flux2_klein saves them (2x2 patches)
        name, pipeline, dit_class, dit = "FLUX.2-klein-4B", "Flux2KleinPipeline", "Flux2Transformer2DModel", \
            make_checkpoints.FLUX_2_KLEIN_4B
        params = inspect.signature(diffusers.AutoencoderKLFlux2.__init__).parameters.items()
        vae = {"_class_name": "AutoencoderKLFlux2", **{k: list(p.default) if isinstance(p.default, tuple) else p.default
                                                       for k, p in params if k != "self"}}
    index = {"_class_name": pipeline, "_diffusers_version": "0.36.0", "transformer": ["diffusers", dit_class],
             "vae": ["diffusers", vae["_class_name"]]}
    dit_config = {"_class_name": dit_class, **{k: list(v) if isinstance(v, tuple) else v for k, v in dit.items()}}
    folder = _write(Path(root) / name, {"model_index.json": index, "transformer/config.json": dit_config,
                                        "vae/config.json": vae})
    return probe_model(folder)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("family-folders"))


def recorded(sweep: str) -> tuple[list[LayerList], list[dict]]:
    data = json.loads((MEMORY / sweep).read_text())
    return [LayerList(k, tuple(v)) for k, v in data["lists"].items()], data["points"]


def on_card(name: str) -> int:
    return json.loads((MEMORY / "h200-sweep-components-2026-11-29.json").read_text())["on_card_bytes"][name]


def predicted_peak(m, lists: list[LayerList], placement: ListPlacement, components: int) -> int:
    """The startup model's terms for one placement per list. Buffers as sglang holds them with every
    streaming list's head (retune/lists.buffer_bytes); for one list that is plan/cost.dit_placed_bytes."""
    wl = workload_for(m, 1024, 1024)
    acts = cost.activation_bytes(m.family, wl.tokens_per_pass, wl.text_tokens, m.dit.hidden_size)
    return cost.memory_breakdown(dit_weights=m.dit.non_block_bytes + resident_bytes(lists, placement),
                                 prefetch_buffers=buffer_bytes(lists, placement), activations=acts,
                                 components=components).total


def errors_gib(m, lists, points, components, skip: str | None = None) -> list[tuple[float, str]]:
    return [((predicted_peak(m, lists, ListPlacement.from_dict(p["lists"]), components) - p["peak_bytes"]) / GiB,
             p["label"]) for p in points if p["label"] != skip]


@pytest.mark.parametrize("sweep, family", [(KLEIN, "flux"), (KLEIN_2, "flux"), (ZIMAGE, "zimage")])
def test_the_folders_are_the_measured_checkpoints_under_the_factor_keys(sweep, family, root):
    m = family_model(sweep, root)
    lists, _ = recorded(sweep)
    assert m.family == family and family in cost.ACTIVATION_FACTOR  # the key the planner looks up
    assert [tuple(g.block_bytes) for g in m.dit.block_groups] == [ll.block_bytes for ll in lists]
    wl = workload_for(m, 1024, 1024)
    assert (wl.tokens_per_pass, wl.text_tokens, wl.cfg_passes) == (4096, 512, 1)  # the plans' workload (plans.json)


@pytest.mark.parametrize("sweep", [KLEIN, KLEIN_2, ZIMAGE])
def test_every_other_measured_peak_is_predicted_within_tolerance(sweep, root):
    """34, 42 and 27 blocks: every placement per list, prefetch 1-6, both policies, everything resident."""
    m = family_model(sweep, root)
    lists, points = recorded(sweep)
    name = "Z-Image-Turbo" if sweep == ZIMAGE else "FLUX.2-klein-4B"
    errors = errors_gib(m, lists, points, on_card(name), skip=FIT_POINTS.get(sweep))
    assert len(errors) >= 26
    assert min(errors)[0] >= -UNDER_GIB, min(errors)
    assert max(errors)[0] <= OVER_GIB, max(errors)


def test_flux1_dev_shares_the_factor_and_is_not_under_predicted():
    """FLUX.1-dev (19 doubles, 38 singles, same width and tokens as FLUX.2-klein at 1024^2), not used in
    the fit: 107 placements of benchmarks/results/2026-11-29-h200-sweep. Its over-prediction grows
    with what is placed: everything resident places 23 GiB, whose 6.5% fragmentation share is 1.5
    GiB where the allocator measured 0.39 GiB (reserved - allocated peak)."""
    m = probe_model(ROOT / "fixtures" / "models" / "FLUX.1-dev")
    lists = lists_of(recording(ALL_RESIDENT))
    assert [tuple(g.block_bytes) for g in m.dit.block_groups] == [ll.block_bytes for ll in lists]
    errors = errors_gib(m, lists, sweep_points(), on_card("FLUX.1-dev"))
    assert len(errors) > 100 and m.family == "flux"
    assert min(errors)[0] >= -UNDER_GIB, min(errors)
    assert max(errors)[0] <= 1.5, max(errors)


def _reading(point: dict) -> MemoryReading:
    return MemoryReading(point["reserved_peak_bytes"], point["allocated_peak_bytes"], point["non_allocator_bytes"])


def _start(lists: list[LayerList], plan) -> ListPlacement:
    d = plan.dit
    return ListPlacement(tuple((ll.key, Placement(r, int(d.prefetch_layers), d.policy))
                               for ll, r in zip(lists, d.resident_per_group)))


def test_klein_at_8gib_starts_with_the_doubles_resident_and_fits(root):
    """The start was doubles 1 / singles 1 (predicted 7.89 GiB, measured 6.08). Now every double and
    6 singles are resident, prefetch 2, strided: not measured itself; its peak from the reading at
    doubles 5 / singles 5 of the second sweep (7.33 GiB) plus the placed bytes it adds (retune/memory:
    that reading gives every doubles-resident point of that sweep within 0.05 GiB) fits 8 GiB."""
    m = family_model(KLEIN_2, root)
    lists, points = recorded(KLEIN_2)
    plan = make_plan(h200(), m, workload_for(m, 1024, 1024), {}, {}, 8 * GiB)
    start = _start(lists, plan)
    doubles, singles = plan.dit.resident_per_group
    assert doubles == lists[0].count and singles > 1
    old = ListPlacement(tuple((ll.key, Placement(1, 2, "strided")) for ll in lists))
    assert resident_bytes(lists, start) > resident_bytes(lists, old)
    five = ListPlacement(((lists[0].key, Placement(5, 1, "strided")), (lists[1].key, Placement(5, 2, "strided"))))
    near = next(p for p in points if ListPlacement.from_dict(p["lists"]) == five)
    c = memory_correction(_reading(near), lists, five, limit_bytes=8 * GiB, predicted_peak_bytes=0)
    doubles_resident = [p for p in points if p["lists"][lists[0].key]["resident_layers"] == lists[0].count]
    misses = [abs(c.peak_of(lists, ListPlacement.from_dict(p["lists"])) - p["peak_bytes"]) for p in doubles_resident]
    assert len(misses) > 10 and max(misses) <= 0.05 * GiB
    assert c.peak_of(lists, start) <= 8 * GiB


@pytest.mark.parametrize("budget_gib", [7, 8, 9, 10, 11, 12, 14])
def test_zimage_starts_fit_their_budget_by_measurement(budget_gib, root):
    """Z-Image's start at each budget: its measured peak where the sweep measured that placement, else
    the peak from the sweep's reference reading (3 resident) plus what it places."""
    m = family_model(ZIMAGE, root)
    lists, points = recorded(ZIMAGE)
    start = _start(lists, make_plan(h200(), m, workload_for(m, 1024, 1024), {}, {}, budget_gib * GiB))
    reference = next(p for p in points if p["kind"] == "reference")
    c = memory_correction(_reading(reference), lists, ListPlacement.from_dict(reference["lists"]),
                          limit_bytes=budget_gib * GiB, predicted_peak_bytes=0)
    measured = [p["peak_bytes"] for p in points if ListPlacement.from_dict(p["lists"]) == start]
    assert max(measured, default=c.peak_of(lists, start)) <= budget_gib * GiB


def test_zimage_at_10gib_starts_at_the_fastest_point_that_fits(root):
    """The plan said 3 resident (6.45 GiB measured, 175.7 ms/step); the sweep's fastest point under
    10 GiB (median step, drift under 0.4%) is 13 resident at prefetch 2 (9.82 GiB, 116.2 ms)."""
    m = family_model(ZIMAGE, root)
    lists, points = recorded(ZIMAGE)
    start = _start(lists, make_plan(h200(), m, workload_for(m, 1024, 1024), {}, {}, 10 * GiB))
    fastest = min((p for p in points if p["peak_bytes"] <= 10 * GiB), key=lambda p: p["median_ms"])
    assert ListPlacement.from_dict(fastest["lists"]) == start
