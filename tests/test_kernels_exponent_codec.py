"""The bf16 exponent codec: its Triton kernels run on the CPU under TRITON_INTERPRET=1, against the
plain-torch reference encoder/decoder, bit for bit (compared through the int16 view, so NaN
payloads, -0 and subnormals count). No GPU: the same kernels run compiled on CUDA in
benchmarks/kernel_bench.py."""
from __future__ import annotations


import pytest
import torch

N = 4099  # odd, and not a multiple of the kernels' 2048-element block


from interpreted import INTERPRETED, run_interpreted


@pytest.fixture(scope="module")
def codec():
    """The codec, its kernels interpreted. Triton reads TRITON_INTERPRET when a @triton.jit function is
    defined (its own triton.language ones included, at import) and again in lazy imports at a launch;
    mixing modes in one process fails ("Cannot call @triton.jit'd outside of the scope of a kernel",
    or gluon's import assertion: tried here with triton 3.8). The suite's process has usually imported
    triton already (through sglang), so these tests run in a fresh process with the variable set from
    its start: `test_this_file_in_a_fresh_interpreted_process` below."""
    if not INTERPRETED:
        pytest.skip("needs TRITON_INTERPRET=1 from the process start; run by "
                    "test_this_file_in_a_fresh_interpreted_process")
    from sglang_autoperf.kernels import exponent_codec

    return exponent_codec


def test_this_file_in_a_fresh_interpreted_process():
    if INTERPRETED:
        pytest.skip("already the interpreted process")
    run_interpreted(__file__, min_passed=20, timeout_s=600)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


def _from_bits(values: list[int]) -> torch.Tensor:
    return torch.tensor([v - 65536 if v >= 32768 else v for v in values], dtype=torch.int16).view(torch.bfloat16)


SPECIAL_BITS = [0x0000, 0x8000,  # +0, -0
                0x0001, 0x007F, 0x8001, 0x807F,  # subnormals, both signs
                0x7F80, 0xFF80,  # +inf, -inf
                0x7FC0, 0xFFC0, 0x7F81, 0xFFFF,  # NaNs: quiet, negative, payloads
                0x0080, 0x7F7F]  # smallest normal, largest finite


def _cases():
    def normal(scale):
        return lambda: (torch.randn(N, generator=_gen(1)) * scale).to(torch.bfloat16)

    def outliers():
        t = torch.randn(N, generator=_gen(2)) * 0.02
        pick = torch.randint(0, N, (N // 50,), generator=_gen(3))
        t[pick] *= torch.logspace(-30, 30, pick.numel())  # 2% of elements over ~200 binades
        return t.to(torch.bfloat16)

    def specials():
        t = torch.randn(N, generator=_gen(4)).to(torch.bfloat16)
        t[torch.arange(0, N, 97)[:len(SPECIAL_BITS) * 3]] = _from_bits(SPECIAL_BITS * 3)
        return t

    return {
        "normal-1e-3": normal(1e-3), "normal-1": normal(1.0), "normal-1e3": normal(1e3),
        "student-t-df3": lambda: torch.distributions.StudentT(3.0).sample((N,)).to(torch.bfloat16),
        "cauchy": lambda: torch.empty(N).cauchy_(generator=_gen(5)).to(torch.bfloat16),
        "outlier-rich": outliers,
        "all-zero": lambda: torch.zeros(N, dtype=torch.bfloat16),
        "signed-zeros": lambda: _from_bits([0x0000, 0x8000] * 50),
        "subnormals": lambda: _from_bits(list(range(1, 128)) + list(range(0x8001, 0x8080))),
        "nan-inf-patterns": specials,
        "one-element": lambda: torch.tensor([-2.5], dtype=torch.bfloat16),
        "three-elements": lambda: torch.tensor([1.0, -0.0, 3e-5], dtype=torch.bfloat16),
        "4-d": lambda: (torch.randn(3, 5, 7, 11, generator=_gen(6)) * 0.02).to(torch.bfloat16),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_is_bit_exact_and_matches_the_reference(codec, name):
    torch.manual_seed(7)  # StudentT draws from the global generator
    t = CASES[name]()
    rec = codec.encode(t, max_escape_rate=1.0)  # every case encoded, whatever its escape rate
    ref = codec.reference_encode(t, max_escape_rate=1.0)
    assert isinstance(rec, codec.CompressedTensor) and isinstance(ref, codec.CompressedTensor)
    assert rec.table == ref.table and rec.shape == tuple(t.shape) == ref.shape
    for field in ("sign_mantissa", "codes", "escape_index", "escape_exponent"):
        assert torch.equal(getattr(rec, field), getattr(ref, field)), field
    decoded = codec.decode(rec)
    assert decoded.shape == t.shape and decoded.dtype == torch.bfloat16
    assert torch.equal(_bits(decoded), _bits(t))
    gathered = codec.decode_into(rec, torch.empty_like(t), block_pairs=64, variant="gather")
    assert torch.equal(_bits(gathered), _bits(t))
    assert torch.equal(_bits(codec.reference_decode(rec)), _bits(t))


def test_escapes_are_exercised_and_patched(codec):
    t = CASES["outlier-rich"]()
    rec = codec.encode(t, max_escape_rate=1.0)
    assert rec.escape_index.numel() > 0 and rec.escape_index.dtype == torch.int32
    assert torch.all(rec.escape_index[1:] > rec.escape_index[:-1])
    assert set(rec.escape_exponent.tolist()).isdisjoint(rec.table)
    assert torch.equal(_bits(codec.decode(rec)), _bits(t))


def test_chunked_encode_equals_the_whole_tensor_encode(codec):
    t = (torch.randn(1001, generator=_gen(8)) * 3).to(torch.bfloat16)
    t[::13] = 1e25
    small = codec.encode(t, max_escape_rate=1.0, chunk_elems=64, block_pairs=16)
    whole = codec.reference_encode(t, max_escape_rate=1.0)
    for field in ("sign_mantissa", "codes", "escape_index", "escape_exponent"):
        assert torch.equal(getattr(small, field), getattr(whole, field)), field


def test_decode_writes_into_the_callers_buffer(codec):
    t = (torch.randn(2, 3, 5, generator=_gen(9)) * 0.02).to(torch.bfloat16)
    rec = codec.encode(t)
    out = torch.full((30,), 7.0, dtype=torch.bfloat16)
    assert codec.decode_into(rec, out) is out
    assert torch.equal(_bits(out), _bits(t.reshape(-1)))


def test_the_kernels_run_interpreted_on_cpu_tensors(codec):
    from sglang_autoperf.kernels import exponent_triton

    assert exponent_triton.interpreted()
    assert type(exponent_triton._decode_kernel).__name__ == "InterpretedFunction"
    # by hand: table (127, 128), codes 0 and 1, sign+mantissa 0x00 and 0xC0 -> 1.0 and -3.0
    out = torch.zeros(2, dtype=torch.int16)
    exponent_triton.decode_into(torch.tensor([0x00, 0xC0], dtype=torch.uint8), torch.tensor([0x10], dtype=torch.uint8),
                                exponent_triton.table_words((127, 128)), out)
    assert out.view(torch.bfloat16).tolist() == [1.0, -3.0]


def test_uniform_random_exponents_stay_raw(codec):
    t = torch.randint(-32768, 32767, (N,), dtype=torch.int16, generator=_gen(10)).view(torch.bfloat16)
    for encode in (codec.encode, codec.reference_encode):
        kept = encode(t)
        assert isinstance(kept, codec.KeptRaw) and "escape rate" in kept.reason
        assert kept.nbytes == 2 * N and kept.shape == (N,)
    assert codec.tensor_stats(t).ratio > 1.0  # encoded anyway, it would grow


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int8])
def test_other_dtypes_are_refused_cleanly(codec, dtype):
    t = torch.ones(17, dtype=dtype)
    kept = codec.encode(t)
    assert isinstance(kept, codec.KeptRaw)
    assert kept.nbytes == 17 * t.element_size() and kept.dtype == dtype
    assert str(dtype).split(".")[-1] in kept.reason or "fp16" in kept.reason


def test_a_wrong_output_buffer_is_refused_and_left_alone(codec):
    rec = codec.encode(torch.ones(8, dtype=torch.bfloat16))
    for out in (torch.zeros(8, dtype=torch.float32), torch.zeros(9, dtype=torch.bfloat16),
                torch.zeros(16, dtype=torch.bfloat16)[::2]):
        before = out.clone()
        with pytest.raises(ValueError, match="decode_into needs"):
            codec.decode_into(rec, out)
        assert torch.equal(out, before)
    out = torch.zeros(8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="decode variant"):
        codec.decode_into(rec, out, variant="huffman")
    assert torch.equal(out, torch.zeros(8, dtype=torch.bfloat16))


def test_an_empty_tensor_stays_raw(codec):
    kept = codec.encode(torch.empty(0, 4, dtype=torch.bfloat16))
    assert isinstance(kept, codec.KeptRaw) and kept.nbytes == 0 and kept.shape == (0, 4)


def test_statistics_from_known_histograms(codec):
    zeros = codec.tensor_stats(torch.zeros(1000, dtype=torch.bfloat16))
    assert (zeros.exponent_entropy_bits, zeros.distinct_exponents, zeros.escape_rate) == (0.0, 1, 0.0)
    assert zeros.compressed_nbytes == 1000 + 500 + 16  # 1 + 1/2 byte per element and the table
    halves = torch.tensor([1.0, 2.0] * 500, dtype=torch.bfloat16)  # two exponents, equally often
    assert codec.tensor_stats(halves).exponent_entropy_bits == pytest.approx(1.0)
    # 20 exponents, 100 elements each: the 5 least frequent (ties: the larger values) escape
    t = torch.tensor([2.0 ** k for k in range(20)] * 100, dtype=torch.bfloat16)
    stats = codec.tensor_stats(t)
    assert stats.escape_rate == pytest.approx(0.25)
    assert stats.exponent_entropy_bits == pytest.approx(torch.log2(torch.tensor(20.0)).item())
    rec = codec.encode(t, max_escape_rate=1.0)
    assert rec.table == tuple(127 + k for k in range(15))
    assert rec.nbytes == stats.compressed_nbytes == 2000 + 1000 + 16 + 500 * 5


def test_typical_weights_compress_to_three_quarters(codec):
    t = (torch.randn(64, 64, generator=_gen(11)) * 0.02).to(torch.bfloat16)
    rec = codec.encode(t)
    assert isinstance(rec, codec.CompressedTensor)
    assert rec.ratio <= 0.78
