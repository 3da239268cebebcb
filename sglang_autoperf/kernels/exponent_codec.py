"""A lossless, fixed-width codec for bf16 tensors: fewer bytes over PCIe, decoded on the GPU.

Layout of one tensor of n elements (bf16 bits: s eeeeeeee mmmmmmm):
  * sign_mantissa  uint8[n]         `s mmmmmmm`, kept as is (the mantissa is near-random);
  * codes          uint8[ceil(n/2)] the exponent as a 4-bit code, element 2i in the low nibble of
                                    byte i; code c < 15 means exponent table[c];
  * table          15 exponents     the tensor's 15 most frequent exponents (ties: smaller first);
  * escape_index   int32[e] (int64 when n >= 2**31), ascending, and escape_exponent uint8[e]:
                                    the elements whose exponent is not in the table (code 15).
Every element decodes from its own bytes (no serial dependency, unlike a Huffman stream); escapes
are patched by a second, tiny kernel. Bytes: n + n/2 + 5e (+16 for the table), so 0.75 of bf16's
2n when escapes are rare. N(0, 0.02) bf16 matrices use 23-29 exponent values, of which the top 15
leave <= 0.016% to escape (benchmarks/results/2026-11-29-h200-kernels/).

Which tensors stay raw, and why MAX_ESCAPE_RATE = 4%: each escape costs 5 bytes (int32 index +
exponent), i.e. 2.5 bf16 elements' worth, so the ratio is 0.75 + 2.5 * rate and compression stops
saving bytes at a rate of 10%. A streamed layer pays the decode on its copy stream as well: on the
H200 measured in benchmarks/results/2026-11-29-h200-kernels/ (pinned H2D 55.4 GB/s, decode of a
whole layer ~1.7 TB/s of output), n elements cost (1.5n + 5e)/55.4 + 2n/1700 ns against 2n/55.4
raw; at a 4% escape rate that is 0.0319n against 0.0361n (12% saved), and at ~8.7% nothing is
left. Hence: above 4% the tensor stays raw. Measured there: random N(0, 0.02) blocks 0.751 of
bf16 with 0.03-0.05% escapes; Cauchy 0.768; uniform random bits kept raw.
fp16 is refused: its exponent has 5 bits and sign+mantissa 11, so a 4-bit code saves at most 1 of
16 bits (6%) and the byte layout does not fit. fp32 and every other dtype are refused too; the
caller keeps those tensors raw (a `KeptRaw` record says why).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import exponent_triton

TABLE_SIZE = 15  # codes 0..14; code 15 is the escape
TABLE_BYTES = 16  # the table as stored: 15 exponents and a count
MAX_ESCAPE_RATE = 0.04  # see the module docstring for the byte arithmetic
CHUNK_ELEMS = 1 << 24  # encode works in chunks: 16 Mi elements keep the temporaries ~200 MB


@dataclass(frozen=True)
class CompressedTensor:
    """One bf16 tensor in the codec's layout; its arrays live on one device (host or GPU)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    table: tuple[int, ...]
    sign_mantissa: torch.Tensor
    codes: torch.Tensor
    escape_index: torch.Tensor
    escape_exponent: torch.Tensor

    @property
    def numel(self) -> int:
        return self.sign_mantissa.numel()

    @property
    def raw_nbytes(self) -> int:
        return self.numel * 2

    @property
    def nbytes(self) -> int:
        arrays = (self.sign_mantissa, self.codes, self.escape_index, self.escape_exponent)
        return TABLE_BYTES + sum(a.numel() * a.element_size() for a in arrays)

    @property
    def ratio(self) -> float:
        return self.nbytes / self.raw_nbytes

    @property
    def device(self) -> torch.device:
        return self.sign_mantissa.device

    def to(self, device, non_blocking: bool = False) -> "CompressedTensor":
        def move(a):
            return a.to(device, non_blocking=non_blocking)

        return CompressedTensor(self.shape, self.dtype, self.table, move(self.sign_mantissa), move(self.codes),
                                move(self.escape_index), move(self.escape_exponent))


@dataclass(frozen=True)
class KeptRaw:
    """A tensor the codec leaves as it is, and why."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    reason: str


@dataclass(frozen=True)
class CodecStats:
    """What the codec would do with one tensor, from its exponent histogram alone."""

    numel: int
    raw_nbytes: int
    compressed_nbytes: int
    escape_rate: float
    exponent_entropy_bits: float
    distinct_exponents: int

    @property
    def ratio(self) -> float:
        return self.compressed_nbytes / self.raw_nbytes if self.raw_nbytes else 1.0


def index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def exponents(bits: torch.Tensor) -> torch.Tensor:
    """The 8-bit exponent of each element, from the int16 view of bf16 bits (as int64 indices)."""
    return (bits.to(torch.int64) >> 7) & 0xFF


def exponent_histogram(t: torch.Tensor, chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """int64[256] counts of each exponent value of a bf16 tensor, on the tensor's device."""
    bits = t.contiguous().reshape(-1).view(torch.int16)
    hist = torch.zeros(256, dtype=torch.int64, device=t.device)
    for start in range(0, bits.numel(), chunk_elems):
        hist += torch.bincount(exponents(bits[start:start + chunk_elems]), minlength=256)
    return hist


def choose_table(hist: torch.Tensor) -> tuple[int, ...]:
    """The (up to) 15 most frequent exponents present, most frequent first, ties by smaller value."""
    counts = hist.cpu().tolist()
    present = sorted((e for e in range(256) if counts[e]), key=lambda e: (-counts[e], e))
    return tuple(present[:TABLE_SIZE])


def stats_from_histogram(hist: torch.Tensor) -> CodecStats:
    counts = hist.cpu().tolist()
    n = sum(counts)
    table = choose_table(hist)
    escapes = n - sum(counts[e] for e in table)
    index_bytes = torch.empty((), dtype=index_dtype(n)).element_size()
    entropy = sum(-c / n * math.log2(c / n) for c in counts if c)
    return CodecStats(numel=n, raw_nbytes=2 * n,
                      compressed_nbytes=TABLE_BYTES + n + (n + 1) // 2 + escapes * (index_bytes + 1),
                      escape_rate=escapes / n if n else 0.0, exponent_entropy_bits=entropy,
                      distinct_exponents=sum(1 for c in counts if c))


def tensor_stats(t: torch.Tensor) -> CodecStats:
    """Ratio, escape rate and exponent entropy of one bf16 tensor (the histogram runs on its device)."""
    return stats_from_histogram(exponent_histogram(t))


def exponent_to_code(table: tuple[int, ...], device) -> torch.Tensor:
    """uint8[256]: code of each exponent value, 15 (escape) for those not in the table."""
    lut = torch.full((256,), exponent_triton.ESCAPE_CODE, dtype=torch.uint8)
    for code, e in enumerate(table):
        lut[e] = code
    return lut.to(device)


def why_raw(t: torch.Tensor, stats: CodecStats | None, max_escape_rate: float) -> str | None:
    """The reason a tensor stays raw, or None when it is worth encoding."""
    if t.dtype == torch.float16:
        return "fp16: a 4-bit code for its 5-bit exponent saves at most 6% and sign+mantissa is 11 bits"
    if t.dtype != torch.bfloat16:
        return f"{t.dtype}: only bf16 is encoded"
    if t.numel() == 0:
        return "empty tensor"
    if stats is not None and stats.escape_rate > max_escape_rate:
        return (f"escape rate {stats.escape_rate:.1%} > {max_escape_rate:.0%} "
                f"({stats.distinct_exponents} distinct exponents): would be {stats.ratio:.2f} of bf16")
    return None


def _kept_raw(t: torch.Tensor, reason: str) -> KeptRaw:
    return KeptRaw(tuple(t.shape), t.dtype, t.numel() * t.element_size(), reason)


def encode(t: torch.Tensor, max_escape_rate: float = MAX_ESCAPE_RATE, chunk_elems: int = CHUNK_ELEMS,
           block_pairs: int = 1024) -> CompressedTensor | KeptRaw:
    """Encode a bf16 tensor with the Triton kernel, chunk by chunk, on its own device (CUDA, or CPU
    under TRITON_INTERPRET=1); a CPU tensor otherwise goes through `reference_encode` (same record)."""
    reason = why_raw(t, None, max_escape_rate)
    if reason:
        return _kept_raw(t, reason)
    if not (t.is_cuda or exponent_triton.interpreted()):
        return reference_encode(t, max_escape_rate)
    assert chunk_elems % 2 == 0, "chunks must hold whole code bytes"
    hist = exponent_histogram(t, chunk_elems)
    reason = why_raw(t, stats_from_histogram(hist), max_escape_rate)
    if reason:
        return _kept_raw(t, reason)
    table = choose_table(hist)
    bits = t.contiguous().reshape(-1).view(torch.int16)
    n = bits.numel()
    lut = exponent_to_code(table, t.device)
    sign_mantissa = torch.empty(n, dtype=torch.uint8, device=t.device)
    codes = torch.empty((n + 1) // 2, dtype=torch.uint8, device=t.device)
    escape_chunks = []
    for start in range(0, n, chunk_elems):
        end = min(n, start + chunk_elems)
        exponent_triton.encode_into(bits[start:end], lut, sign_mantissa[start:end],
                                    codes[start // 2:(end + 1) // 2], block_pairs=block_pairs)
        escape_chunks.append(start + (lut[exponents(bits[start:end])] == exponent_triton.ESCAPE_CODE)
                             .nonzero().reshape(-1))
    return _with_escapes(t, table, sign_mantissa, codes, bits, torch.cat(escape_chunks))


def _with_escapes(t, table, sign_mantissa, codes, bits, escape_index) -> CompressedTensor:
    escape_exponent = exponents(bits[escape_index]).to(torch.uint8)
    return CompressedTensor(tuple(t.shape), t.dtype, table, sign_mantissa, codes,
                            escape_index.to(index_dtype(bits.numel())), escape_exponent)


def decode_into(rec: CompressedTensor, out: torch.Tensor, block_pairs: int = 1024, num_warps: int = 4,
                variant: str = "interleave") -> torch.Tensor:
    """Decode into the caller's bf16 tensor (e.g. a layer's device buffer), on the current stream.

    Two launches: the main kernel (escapes get exponent 0) and, when there are escapes, the patch.
    """
    if out.dtype != rec.dtype or not out.is_contiguous() or out.numel() != rec.numel or out.device != rec.device:
        raise ValueError(f"decode_into needs a contiguous {rec.dtype} tensor of {rec.numel} elements on "
                         f"{rec.device}; got {out.dtype} {tuple(out.shape)} on {out.device}")
    if variant not in exponent_triton.DECODE_VARIANTS:
        raise ValueError(f"decode variant {variant!r} is none of {exponent_triton.DECODE_VARIANTS}")
    out_bits = out.view(torch.int16).reshape(-1)
    exponent_triton.decode_into(rec.sign_mantissa, rec.codes, exponent_triton.table_words(rec.table), out_bits,
                                block_pairs=block_pairs, num_warps=num_warps, variant=variant)
    exponent_triton.patch_escapes(rec.sign_mantissa, rec.escape_index, rec.escape_exponent, out_bits)
    return out


def decode(rec: CompressedTensor) -> torch.Tensor:
    out = torch.empty(rec.shape, dtype=rec.dtype, device=rec.device)
    return decode_into(rec, out)


# --------------------------------------------------------------------------- plain-torch oracle

def reference_encode(t: torch.Tensor, max_escape_rate: float = MAX_ESCAPE_RATE) -> CompressedTensor | KeptRaw:
    """The same record as `encode`, in plain torch over the whole tensor at once (the tests' oracle)."""
    hist = exponent_histogram(t) if t.dtype == torch.bfloat16 and t.numel() else None
    reason = why_raw(t, stats_from_histogram(hist) if hist is not None else None, max_escape_rate)
    if reason:
        return _kept_raw(t, reason)
    table = choose_table(hist)
    bits = t.contiguous().reshape(-1).view(torch.int16)
    wide = bits.to(torch.int32) & 0xFFFF
    sign_mantissa = (((wide >> 8) & 0x80) | (wide & 0x7F)).to(torch.uint8)
    code = exponent_to_code(table, t.device)[exponents(bits)]
    padded = torch.cat([code, code.new_zeros(code.numel() % 2)])
    codes = padded[0::2] | (padded[1::2] << 4)
    escape_index = (code == exponent_triton.ESCAPE_CODE).nonzero().reshape(-1)
    return _with_escapes(t, table, sign_mantissa, codes, bits, escape_index)


def reference_decode(rec: CompressedTensor) -> torch.Tensor:
    """bf16 tensor from a record, in plain torch (the tests' oracle)."""
    entries = torch.tensor(list(rec.table) + [0] * (16 - len(rec.table)), dtype=torch.int32, device=rec.device)
    codes = rec.codes.to(torch.int32)
    code = torch.stack([codes & 0xF, codes >> 4], dim=1).reshape(-1)[:rec.numel]
    exponent = entries[code]
    exponent[rec.escape_index.to(torch.int64)] = rec.escape_exponent.to(torch.int32)
    sm = rec.sign_mantissa.to(torch.int32)
    bits = ((sm & 0x80) << 8) | (exponent << 7) | (sm & 0x7F)
    return bits.to(torch.int16).view(torch.bfloat16).reshape(rec.shape)


# --------------------------------------------------------------------------- one buffer per tensor

@dataclass(frozen=True)
class PackedLayout:
    """Where a record's arrays sit in one uint8 buffer (one host-to-device copy per tensor):
    sign_mantissa, codes, then the escape index (aligned for its dtype) and escape exponents."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    table: tuple[int, ...]
    numel: int
    escapes: int
    index_dtype: torch.dtype

    @property
    def codes_at(self) -> int:
        return self.numel

    @property
    def index_at(self) -> int:
        width = torch.empty((), dtype=self.index_dtype).element_size()
        end = self.codes_at + (self.numel + 1) // 2
        return -(-end // width) * width

    @property
    def exponent_at(self) -> int:
        return self.index_at + self.escapes * torch.empty((), dtype=self.index_dtype).element_size()

    @property
    def nbytes(self) -> int:
        return self.exponent_at + self.escapes


def packed_layout(rec: CompressedTensor) -> PackedLayout:
    return PackedLayout(rec.shape, rec.dtype, rec.table, rec.numel, rec.escape_index.numel(), rec.escape_index.dtype)


def pack_into(rec: CompressedTensor, out: torch.Tensor) -> PackedLayout:
    """Copy a record's arrays into `out` (uint8, at least the layout's nbytes, on the record's device)."""
    layout = packed_layout(rec)
    if out.dtype != torch.uint8 or out.numel() < layout.nbytes:
        raise ValueError(f"pack_into needs uint8[{layout.nbytes}]; got {out.dtype}[{out.numel()}]")
    out[:layout.codes_at].copy_(rec.sign_mantissa)
    out[layout.codes_at:layout.codes_at + rec.codes.numel()].copy_(rec.codes)
    out[layout.index_at:layout.exponent_at].copy_(rec.escape_index.view(torch.uint8))
    out[layout.exponent_at:layout.nbytes].copy_(rec.escape_exponent)
    return layout


def from_packed(buf: torch.Tensor, layout: PackedLayout) -> CompressedTensor:
    """The record over a packed buffer's bytes (views, no copy), on the buffer's device."""
    return CompressedTensor(layout.shape, layout.dtype, layout.table, buf[:layout.codes_at],
                            buf[layout.codes_at:layout.codes_at + (layout.numel + 1) // 2],
                            buf[layout.index_at:layout.exponent_at].view(layout.index_dtype),
                            buf[layout.exponent_at:layout.nbytes])
