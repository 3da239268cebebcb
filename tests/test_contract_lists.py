"""A placement per layer list on sglang 0.5.23's real LayerwiseOffloadManager objects (CPU): a DiT
with two offloaded lists, one manager each, as FLUX.1 has (double and single blocks). The
placement is applied the way the in-process sweep and the live tuner apply it, one
sglang_contract.set_manager_placement per manager; retune/lists.py's bytes are checked against
what sglang's managers really keep."""
import pytest
import torch

from sglang_autoperf.sglang_adapter import contract as sa
from sglang_autoperf.retune.lists import LayerList, ListPlacement, buffer_bytes, list_key, resident_bytes
from sglang_autoperf.trace import Placement
from test_sglang_contract import use_host_device  # the host-answering device module sglang's own unit tests use


class _Double(torch.nn.Module):  # twice a single block's bytes, as FLUX's double blocks are the larger
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.b(torch.tanh(self.a(x))))


class _TwoListDit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.double_blocks = torch.nn.ModuleList(_Double() for _ in range(3))
        self.single_blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(6))

    def forward(self, x):
        for block in self.double_blocks:
            x = block(x)
        for block in self.single_blocks:
            x = torch.tanh(block(x))
        return x


@pytest.fixture
def two_lists(monkeypatch):
    lo = use_host_device(monkeypatch)
    torch.manual_seed(0)
    dit, x = _TwoListDit(), torch.randn(2, 8)
    with torch.no_grad():
        reference = dit(x).clone()
    managers = [lo.LayerwiseOffloadManager(dit, layers_attr_str=name, num_layers=n, enabled=True, pin_cpu_memory=False,
                                           prefetch_size=1, resident_layers=0, residency_policy="strided")
                for name, n in (("double_blocks", 3), ("single_blocks", 6))]
    assert all(m.enabled for m in managers)

    def forward_matches() -> bool:
        with torch.no_grad():
            return torch.equal(dit(x), reference)

    return {"transformer": managers}, forward_matches


def _lists(managers) -> list[LayerList]:
    return [LayerList(list_key(c, sa.manager_layer_list_name(m)),
                      tuple(sa.manager_layer_bytes(m, i) for i in range(sa.manager_setting(m)["num_layers"])))
            for c, group in managers.items() for m in group]


def _apply(managers, placement: ListPlacement) -> None:
    by_key = {list_key(c, sa.manager_layer_list_name(m)): m for c, group in managers.items() for m in group}
    for key, p in placement.lists:
        sa.set_manager_placement(by_key[key], prefetch_layers=p.prefetch_layers, resident_layers=p.resident_layers,
                                 policy=p.policy)


@pytest.mark.parametrize("doubles, singles", [
    (Placement(3, 1, "strided"), Placement(2, 2, "strided")),  # doubles resident, singles streamed (issue 17)
    (Placement(1, 2, "leading"), Placement(6, 1, "leading")),
    (Placement(0, 1, "strided"), Placement(0, 3, "strided")),
])
def test_a_different_placement_per_list_on_the_real_managers(two_lists, doubles, singles):
    managers, forward_matches = two_lists
    lists = _lists(managers)
    assert [ll.key for ll in lists] == ["transformer.double_blocks", "transformer.single_blocks"]
    assert lists[0].block_bytes[0] == 2 * lists[1].block_bytes[0]
    placement = ListPlacement(((lists[0].key, doubles), (lists[1].key, singles)))
    _apply(managers, placement)
    double_m, single_m = managers["transformer"]
    assert (sa.manager_setting(double_m)["resident_layers"], sa.manager_setting(single_m)["resident_layers"]) == \
        (doubles.resident_layers, singles.resident_layers)
    assert forward_matches() and forward_matches()  # lossless, and again once residency is armed
    for ll, m in zip(lists, (double_m, single_m)):
        # what sglang keeps resident is what retune/lists counts
        kept = sum(sa.manager_layer_bytes(m, i) for i in m._resident_set)
        assert kept == resident_bytes([ll], ListPlacement(((ll.key, placement.get(ll.key)),)))
        assert m._resident_set <= m._gpu_layers
    # what else sglang holds between forwards (the heads prefetched for the next pass) stays within
    # the buffers retune/lists counts
    held = sum(sa.manager_layer_bytes(m, i) for m in (double_m, single_m) for i in m._gpu_layers - m._resident_set)
    assert held <= buffer_bytes(lists, placement)
    assert sum(sa.manager_layer_bytes(m, i) for m in (double_m, single_m) for i in m._gpu_layers) >= \
        resident_bytes(lists, placement)


def test_a_per_list_change_back_to_uniform_is_lossless(two_lists):
    managers, forward_matches = two_lists
    lists = _lists(managers)
    _apply(managers, ListPlacement(((lists[0].key, Placement(3, 1, "strided")), (lists[1].key, Placement(0, 2, "strided")))))
    assert forward_matches()
    _apply(managers, ListPlacement.uniform([ll.key for ll in lists], Placement(2, 1, "leading")))
    assert [sa.manager_setting(m)["resident_layers"] for m in managers["transformer"]] == [2, 2]
    assert forward_matches() and forward_matches()
