"""Triton kernels of the bf16 exponent codec (the layout is described in exponent_codec.py).

bf16 bits: s eeeeeeee mmmmmmm. Per element the codec keeps one byte `s mmmmmmm` and a 4-bit code
(two per byte, element 2i in the low nibble) into a table of 15 exponents; code 15 is an escape,
whose exponent lives in a sparse list patched in after the main decode.

Launch defaults (1024 pairs per program, 4 warps, `interleave`): within 2% of the fastest of 16
configurations on an H200 in both calls of benchmarks/results/2026-11-29-h200-kernels/ (1.67 of
1.70 TB/s in the second).
The table reaches the decoder as four int32 words (four 8-bit entries each), not as a tensor: the
lookup is a few register selects and a shift instead of a memory gather per element.
Every launcher takes tensors on one device: CUDA, or CPU when the kernels were defined under
TRITON_INTERPRET=1 (the CPU tests do that).
"""
from __future__ import annotations

import triton
import triton.language as tl

ESCAPE_CODE = 15


@triton.jit
def _encode_kernel(bits_ptr, lut_ptr, sign_mantissa_ptr, codes_ptr, n, BLOCK_PAIRS: tl.constexpr):
    pid = tl.program_id(0)
    pair = pid.to(tl.int64) * BLOCK_PAIRS + tl.arange(0, BLOCK_PAIRS)
    even = pair * 2
    odd = even + 1
    b_even = tl.load(bits_ptr + even, mask=even < n, other=0).to(tl.int32) & 0xFFFF
    b_odd = tl.load(bits_ptr + odd, mask=odd < n, other=0).to(tl.int32) & 0xFFFF
    c_even = tl.load(lut_ptr + ((b_even >> 7) & 0xFF)).to(tl.int32)
    c_odd = tl.load(lut_ptr + ((b_odd >> 7) & 0xFF)).to(tl.int32)
    c_odd = tl.where(odd < n, c_odd, 0)  # the pad nibble of an odd count is 0
    sm_even = ((b_even >> 8) & 0x80) | (b_even & 0x7F)
    sm_odd = ((b_odd >> 8) & 0x80) | (b_odd & 0x7F)
    tl.store(sign_mantissa_ptr + even, sm_even.to(tl.uint8), mask=even < n)
    tl.store(sign_mantissa_ptr + odd, sm_odd.to(tl.uint8), mask=odd < n)
    tl.store(codes_ptr + pair, (c_even | (c_odd << 4)).to(tl.uint8), mask=even < n)


@triton.jit(do_not_specialize=["w0", "w1", "w2", "w3"])  # one compile for every table
def _decode_kernel(sign_mantissa_ptr, codes_ptr, out_ptr, n, w0, w1, w2, w3, BLOCK_PAIRS: tl.constexpr):
    pid = tl.program_id(0)
    pair = pid.to(tl.int64) * BLOCK_PAIRS + tl.arange(0, BLOCK_PAIRS)
    packed = tl.load(codes_ptr + pair, mask=pair * 2 < n, other=0).to(tl.int32)
    code = tl.interleave(packed & 0xF, packed >> 4)  # element 2i <- low nibble of byte i
    offs = pid.to(tl.int64) * (2 * BLOCK_PAIRS) + tl.arange(0, 2 * BLOCK_PAIRS)
    mask = offs < n
    sm = tl.load(sign_mantissa_ptr + offs, mask=mask, other=0).to(tl.int32)
    word = tl.where(code < 8, tl.where(code < 4, w0, w1), tl.where(code < 12, w2, w3))
    exponent = (word >> ((code & 3) * 8)) & 0xFF
    bits = ((sm & 0x80) << 8) | (exponent << 7) | (sm & 0x7F)
    tl.store(out_ptr + offs, bits.to(tl.int16), mask=mask)


@triton.jit(do_not_specialize=["w0", "w1", "w2", "w3"])
def _decode_gather_kernel(sign_mantissa_ptr, codes_ptr, out_ptr, n, w0, w1, w2, w3, BLOCK: tl.constexpr):
    """The same decode with each element loading its own code byte (two lanes read one byte)
    instead of an interleave of the two nibbles: a variant the benchmark times against the first."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    packed = tl.load(codes_ptr + (offs >> 1), mask=mask, other=0).to(tl.int32)
    code = (packed >> ((offs & 1).to(tl.int32) * 4)) & 0xF
    sm = tl.load(sign_mantissa_ptr + offs, mask=mask, other=0).to(tl.int32)
    word = tl.where(code < 8, tl.where(code < 4, w0, w1), tl.where(code < 12, w2, w3))
    exponent = (word >> ((code & 3) * 8)) & 0xFF
    bits = ((sm & 0x80) << 8) | (exponent << 7) | (sm & 0x7F)
    tl.store(out_ptr + offs, bits.to(tl.int16), mask=mask)


@triton.jit(do_not_specialize=["count"])
def _patch_escapes_kernel(sign_mantissa_ptr, index_ptr, exponent_ptr, out_ptr, count, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < count
    idx = tl.load(index_ptr + offs, mask=mask, other=0).to(tl.int64)
    exponent = tl.load(exponent_ptr + offs, mask=mask, other=0).to(tl.int32)
    sm = tl.load(sign_mantissa_ptr + idx, mask=mask, other=0).to(tl.int32)
    bits = ((sm & 0x80) << 8) | (exponent << 7) | (sm & 0x7F)
    tl.store(out_ptr + idx, bits.to(tl.int16), mask=mask)


def interpreted() -> bool:
    """True when the kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return not isinstance(_decode_kernel, triton.runtime.JITFunction)


def table_words(table: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The 16-entry table (15 exponents, then 0 for the escape code) as four signed int32 words."""
    entries = list(table) + [0] * (16 - len(table))
    words = []
    for w in range(4):
        value = sum(entries[4 * w + k] << (8 * k) for k in range(4))
        words.append(value - (1 << 32) if value >= (1 << 31) else value)
    return tuple(words)


def encode_into(bits, lut, sign_mantissa, codes, *, block_pairs: int = 1024) -> None:
    """bits: int16 view of the bf16 elements; lut: uint8[256] exponent -> code."""
    n = bits.numel()
    grid = (triton.cdiv(triton.cdiv(n, 2), block_pairs),)
    _encode_kernel[grid](bits, lut, sign_mantissa, codes, n, BLOCK_PAIRS=block_pairs)


DECODE_VARIANTS = ("interleave", "gather")


def decode_into(sign_mantissa, codes, words, out_bits, *, block_pairs: int = 1024, num_warps: int = 4,
                variant: str = "interleave") -> None:
    """out_bits: int16 view of the caller's bf16 output; escapes get exponent 0 here (see patch).
    A program decodes 2 * block_pairs elements."""
    n = out_bits.numel()
    grid = (triton.cdiv(triton.cdiv(n, 2), block_pairs),)
    if variant == "gather":
        _decode_gather_kernel[grid](sign_mantissa, codes, out_bits, n, *words, BLOCK=2 * block_pairs,
                                    num_warps=num_warps)
    else:
        _decode_kernel[grid](sign_mantissa, codes, out_bits, n, *words, BLOCK_PAIRS=block_pairs,
                             num_warps=num_warps)


def patch_escapes(sign_mantissa, index, exponent, out_bits, *, block: int = 1024) -> None:
    count = index.numel()
    if count:
        _patch_escapes_kernel[(triton.cdiv(count, block),)](sign_mantissa, index, exponent, out_bits, count,
                                                             BLOCK=block)
