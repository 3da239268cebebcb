"""Compressed layer streaming (measure/compressed.py, issue 18) on sglang 0.5.23's real
LayerwiseOffloadManager objects, on the CPU: the manager runs with the host-answering device module
sglang's own unit tests use (copies are host-to-host), and the codec's Triton kernels run under
TRITON_INTERPRET=1 in a fresh process (see tests/test_kernels_exponent_codec.py for why a fresh
one). The same code runs compiled on CUDA in benchmarks/compress_sweep.py."""
from __future__ import annotations

import logging

import pytest
import torch

from sglang_autoperf.sglang_adapter import contract as sa
from sglang_autoperf.trace import Placement
from interpreted import INTERPRETED, run_interpreted
from test_sglang_contract import use_host_device

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="kernels need TRITON_INTERPRET=1 from the process "
                                       "start; run by test_this_file_in_a_fresh_interpreted_process")


def test_this_file_in_a_fresh_interpreted_process():
    if INTERPRETED:
        pytest.skip("already the interpreted process")
    run_interpreted(__file__, min_passed=8)


class _Block(torch.nn.Module):
    """A bf16 block with an fp32 norm scale: the layer holds a flat buffer of each dtype."""

    def __init__(self, width: int):
        super().__init__()
        self.a, self.b = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
        self.scale = torch.nn.Parameter(torch.ones(width, dtype=torch.float32))

    def forward(self, x):
        h = torch.tanh(self.a(x)) * self.scale.to(x.dtype)
        return torch.tanh(self.b(h)) + x


class _Dit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.double_blocks = torch.nn.ModuleList(_Block(64) for _ in range(3))
        self.single_blocks = torch.nn.ModuleList(_Block(32) for _ in range(5))
        self.down = torch.nn.Linear(64, 32, bias=False)

    def forward(self, x):
        for block in self.double_blocks:
            x = block(x)
        x = self.down(x)
        for block in self.single_blocks:
            x = block(x)
        return x


@pytest.fixture
def dit(monkeypatch):
    lo = use_host_device(monkeypatch)
    torch.manual_seed(0)
    model = _Dit()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype == torch.float32 and name.endswith("scale"):
                continue
            p.copy_(torch.randn_like(p) * 0.02)
    model.to(torch.bfloat16)
    for block in [*model.double_blocks, *model.single_blocks]:
        block.scale.data = (1 + 0.1 * torch.randn(block.scale.shape)).float()
    x = torch.randn(4, 64).to(torch.bfloat16)
    with torch.no_grad():
        reference = model(x).clone()
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    managers = [lo.LayerwiseOffloadManager(model, layers_attr_str=name, num_layers=n, enabled=True,
                                           pin_cpu_memory=False, prefetch_size=1, resident_layers=0,
                                           residency_policy="strided")
                for name, n in (("double_blocks", 3), ("single_blocks", 5))]

    def forward_matches() -> bool:
        with torch.no_grad():
            return torch.equal(model(x).view(torch.int16), reference.view(torch.int16))

    return {"transformer": managers}, forward_matches, originals


@pytest.fixture
def built(dit):
    """The dit fixture's managers with both stores built (a host with room for both)."""
    from sglang_autoperf.measure.compressed import CompressedStreaming

    managers, forward_matches, originals = dit
    return managers, forward_matches, originals, CompressedStreaming.build(managers, host_available=1 << 40)


def _fp32_manager(monkeypatch):
    """A real manager over three fp32 Linear blocks (nothing for the bf16 codec)."""
    lo = use_host_device(monkeypatch)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
    return lo.LayerwiseOffloadManager(model, layers_attr_str="blocks", num_layers=3, enabled=True, pin_cpu_memory=False)


@needs_interpreter
def test_decoded_layers_run_bit_identical_and_hold_fewer_bytes(built):
    managers, forward_matches, _, streaming = built
    report = streaming.report()
    assert report["layers"] == 8  # every block's bf16 buffer; the fp32 scales stay raw
    assert 0.74 < report["ratio"] < 0.80  # N(0, 0.02) bf16: 0.751 on the H200 page's blocks
    streaming.set_active(True)
    assert forward_matches() and forward_matches()
    streaming.set_active(False)
    assert forward_matches()


@needs_interpreter
def test_a_commit_to_compression_drops_sglangs_raw_buffers_and_follows_placement_changes(built):
    managers, forward_matches, _, streaming = built
    raw_before = sum(b.numel() * 2 for m in managers["transformer"]
                     for b in sa.manager_flat_host_buffers(m, torch.bfloat16).values())
    before = streaming.host_bytes()
    streaming.commit(True)
    for m in managers["transformer"]:
        assert sa.manager_flat_host_buffers(m, torch.bfloat16) == {}
        assert sa.manager_flat_host_buffers(m, torch.float32)  # the other dtype is untouched
    assert streaming.host_bytes() < 0.8 * raw_before < before
    doubles, singles = managers["transformer"]
    for d, s in ((Placement(1, 2, "strided"), Placement(2, 1, "leading")), (Placement(0, 3, "leading"),
                                                                               Placement(5, 1, "strided"))):
        for m, p in ((doubles, d), (singles, s)):
            sa.set_manager_placement(m, prefetch_layers=p.prefetch_layers, resident_layers=p.resident_layers,
                                     policy=p.policy)
        assert forward_matches() and forward_matches()


@needs_interpreter
def test_sglang_reading_its_host_buffers_gets_them_back_bit_for_bit(built, caplog):
    managers, forward_matches, originals, streaming = built
    streaming.commit(True)
    doubles = managers["transformer"][0]
    with caplog.at_level(logging.INFO):
        weight = doubles.get_cpu_weight("double_blocks.1.a.weight")  # what a weight update reads first
    assert torch.equal(weight.view(torch.int16), originals["double_blocks.1.a.weight"].view(torch.int16))
    assert "raw host buffers restored" in caplog.text
    assert sa.manager_flat_host_buffers(doubles, torch.bfloat16)  # sglang's buffers are back
    assert not streaming.stores[0].active and streaming.stores[1].active  # the other list stays compressed
    served = dict(doubles.iter_cpu_weights())
    assert all(torch.equal(served[n].view(-1).view(torch.int16), originals[n].view(-1).view(torch.int16))
               for n in served if n in originals and originals[n].dtype == torch.bfloat16)
    assert forward_matches()


@needs_interpreter
def test_a_commit_to_raw_keeps_sglangs_buffers_and_drops_the_store(built):
    managers, forward_matches, _, streaming = built
    streaming.set_active(True)
    streaming.commit(False)
    assert not streaming.active and streaming.host_bytes() == 0
    assert all(sa.manager_flat_host_buffers(m, torch.bfloat16) for m in managers["transformer"])
    assert forward_matches()


@needs_interpreter
def test_the_monitor_wraps_the_store_and_unwrapping_keeps_it(built):
    managers, forward_matches, _, streaming = built
    streaming.commit(True)
    calls = []
    doubles = managers["transformer"][0]

    def counting(original):
        def prefetch_layer(i, *args, **kwargs):
            calls.append(i)
            return original(doubles, i, *args, **kwargs)
        return prefetch_layer

    assert sa.wrap_manager_prefetch(doubles, counting)
    assert forward_matches()
    assert calls  # the monitor's wrapper ran, and the store's decode below it (bit-identical output)
    sa.unwrap_manager_prefetch(doubles)
    assert doubles.__dict__.get("prefetch_layer") is not None  # the store's own wrapper is back
    assert forward_matches()


@needs_interpreter
def test_not_tried_when_the_host_cannot_hold_both_stores(dit, caplog):
    from sglang_autoperf.measure.compressed import CompressedStreaming

    managers, forward_matches, _ = dit
    with caplog.at_level(logging.INFO):
        assert CompressedStreaming.build(managers, host_available=1 << 20) is None
    assert "compressed streaming not tried: the host has" in caplog.text
    assert all("prefetch_layer" not in m.__dict__ for m in managers["transformer"])
    assert forward_matches()


@needs_interpreter
def test_a_manager_without_bf16_layers_is_left_alone(monkeypatch, caplog):
    from sglang_autoperf.measure.compressed import CompressedStreaming

    manager = _fp32_manager(monkeypatch)
    with caplog.at_level(logging.INFO):
        assert CompressedStreaming.build({"transformer": [manager]}, host_available=1 << 40) is None
    assert "no offloaded layer is held as a flat bf16 host buffer" in caplog.text


def test_without_cuda_or_the_interpreter_the_decoder_is_said_to_be_unavailable():
    if INTERPRETED:
        pytest.skip("the interpreter runs the decoder on the CPU")
    from sglang_autoperf.measure.compressed import streaming_unavailable

    assert "runs on CUDA devices" in streaming_unavailable(torch.device("cpu"))


def test_the_streaming_contract_holds_on_the_installed_sglang():
    assert sa.streaming_problems() == []


def test_monitor_wrappers_stack_and_unwrap_in_order(monkeypatch):
    """Without any kernel: two wrappers over sglang's prefetch_layer, removed in reverse order."""
    manager = _fp32_manager(monkeypatch)
    seen = []

    def tagging(tag):
        def make(original):
            def prefetch_layer(i, *args, **kwargs):
                seen.append(tag)
                return original(manager, i, *args, **kwargs)
            return prefetch_layer
        return make

    sa.wrap_manager_prefetch(manager, tagging("inner"))
    sa.wrap_manager_prefetch(manager, tagging("outer"))
    manager.release_all()
    manager.prefetch_layer(1)
    assert seen == ["outer", "inner"] and 1 in manager._gpu_layers
    sa.unwrap_manager_prefetch(manager)
    seen.clear()
    manager.release_all()
    manager.prefetch_layer(2)
    assert seen == ["inner"]
    sa.unwrap_manager_prefetch(manager)
    assert "prefetch_layer" not in manager.__dict__


@needs_interpreter
@pytest.mark.parametrize("cached, calibrating, measuring, compressed_after", [
    (True, False, False, True),     # a cached measured choice is applied at once: sglang's raw buffers go
    (False, False, False, False),   # ... or the compressed store goes
    (None, True, False, None),      # not measured yet and a calibration is running: wait for it
    (None, False, True, None),      # not measured yet: the A/B starts on this request's steps
])
def test_the_workers_choice_from_the_cache_or_by_measuring(built, cached, calibrating, measuring, compressed_after):
    from sglang_autoperf.measure.compressed import CompressionChoice

    managers, forward_matches, _, streaming = built
    choice = CompressionChoice(streaming)
    choice.begin_request(cached, calibrating, "a placement")
    assert choice.measuring is measuring
    assert all(s.committed is compressed_after for s in choice.streaming.stores)
    if compressed_after is True:
        assert all(sa.manager_flat_host_buffers(m, torch.bfloat16) == {} for m in managers["transformer"])
    assert forward_matches()


@needs_interpreter
def test_a_store_whose_first_layer_decodes_to_other_bits_is_never_used(dit, monkeypatch, caplog):
    """Fault injected: the decoder flips one bit. The build's own check catches it before any
    prefetch streams compressed, and sglang's raw buffers stay as they were."""
    from sglang_autoperf.measure import compressed

    managers, forward_matches, _ = dit
    decode = compressed.CompressedLayers._decode

    def flipped(self, entry, non_blocking):
        out = decode(self, entry, non_blocking)
        out.view(torch.int16)[0] ^= 1
        return out

    monkeypatch.setattr(compressed.CompressedLayers, "_decode", flipped)
    with caplog.at_level(logging.WARNING):
        assert compressed.CompressedStreaming.build(managers, host_available=1 << 40) is None
    assert "decodes to other bits" in caplog.text
    assert all(sa.manager_flat_host_buffers(m, torch.bfloat16) for m in managers["transformer"])
    assert forward_matches()


def test_the_store_pins_through_sglangs_exact_size_allocator():
    """pinned_host_buffer calls sglang's `_pinned_empty(*size, dtype=...)` (no CUDA here to pin: the
    signature is what can be checked on the CPU; streaming_problems() checks it exists at run time)."""
    import inspect

    from sglang.multimodal_gen.runtime.managers.memory_managers import layerwise_offload as lo

    params = inspect.signature(lo._pinned_empty).parameters
    assert any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    assert params["dtype"].kind is inspect.Parameter.KEYWORD_ONLY


@needs_interpreter
@pytest.mark.parametrize("committed", [False, True])
def test_a_failing_decode_leaves_the_manager_streaming_raw_and_the_output_unchanged(built, monkeypatch, caplog,
                                                                                    committed):
    """Fault injected after the build: every decode raises. The prefetch steps aside to sglang's raw
    path (its buffers restored first where the commit had dropped them) and says so once per list."""
    from sglang_autoperf.measure import compressed

    managers, forward_matches, _, streaming = built
    if committed:
        streaming.commit(True)
    else:
        streaming.set_active(True)

    def broken(self, entry, non_blocking):
        raise RuntimeError("injected decoder failure")

    monkeypatch.setattr(compressed.CompressedLayers, "_decode", broken)
    with caplog.at_level(logging.WARNING):
        assert forward_matches() and forward_matches()
    assert caplog.text.count("it streams raw from now on") == 2  # the two layer lists, once each
    assert not streaming.active
    assert all(sa.manager_flat_host_buffers(m, torch.bfloat16) for m in managers["transformer"])
