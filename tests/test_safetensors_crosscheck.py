"""Our hand-written safetensors header reader (probe/model.py `read_safetensors_header`) against the
reference, `safetensors.safe_open` (installed with sglang): the same names, shapes and dtypes for
every real file we have, and both refuse the corrupt ones (issue 19, item 7)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

safetensors = pytest.importorskip("safetensors")
torch = pytest.importorskip("torch")
from safetensors import SafetensorError, safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sglang_autoperf.probe.model import ModelProbeError, read_safetensors_header  # noqa: E402

MODELS = Path(__file__).parent / "fixtures" / "models"
FIXTURE_FILES = sorted(MODELS.rglob("*.safetensors"))


def reference(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """What safetensors itself reads from the file: name -> (dtype, shape)."""
    with safe_open(str(path), framework="pt") as f:
        return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}


def ours(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (t.dtype, t.shape) for name, t in read_safetensors_header(path).items()}


# ---- real files: the same answer -----------------------------------------------------------------

@pytest.mark.parametrize("path", FIXTURE_FILES or [pytest.param(None, marks=pytest.mark.skip(
    reason="tests/fixtures/models holds configs only (no .safetensors file): nothing to compare there"))],
    ids=lambda p: str(p.relative_to(MODELS)) if p else "none")
def test_fixture_files_read_the_same(path):
    assert ours(path) == reference(path)


@pytest.mark.parametrize("component", ["transformer", "vae", "text_encoder"])
def test_demo_model_files_read_the_same(demo_model, component):
    [path] = sorted((demo_model / component).glob("*.safetensors"))
    expected = reference(path)
    assert len(expected) > 5  # real checkpoints of the real diffusers/transformers classes
    assert ours(path) == expected


def _write(path: Path, header: dict, data_bytes: int) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes)
    return path


DTYPES = ["BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "C64", "U64", "I64", "F64",
          "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F6_E2M3", "F6_E3M2", "F4"]
# Bits per element as the safetensors format defines them (sub-byte types packed); the rest say it
# in their name (F8_E4M3: 8).
BITS = {"BOOL": 8, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4, "C64": 64}


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_safetensors_dtype_and_its_packed_size(tmp_path, dtype):
    bits = BITS.get(dtype) or int("".join(c for c in dtype.split("_")[0] if c.isdigit()))
    size = 16 * bits // 8  # 16 elements: whole bytes for 4- and 6-bit types too
    path = _write(tmp_path / "t.safetensors", {"w": {"dtype": dtype, "shape": [2, 8], "data_offsets": [0, size]}},
                  size)
    assert ours(path) == reference(path) == {"w": (dtype, (2, 8))}


# ---- corrupt files: both refuse ------------------------------------------------------------------

def _valid_parts(tmp_path: Path) -> tuple[dict, int]:
    """The header and data size of a file safetensors itself wrote: "b" [4] f32 at bytes 0-16, then
    "a" [2, 3] bf16 at 16-28."""
    path = tmp_path / "valid.safetensors"
    save_file({"a": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.ones(4)}, str(path))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["b"]["data_offsets"] == [0, 16] and header["a"]["data_offsets"] == [16, 28]
    return header, len(raw) - 8 - n


def _with_a(data_extra: int = 0, **fields):
    """A corruption: tensor "a" with these header fields, and `data_extra` bytes more data."""
    def corrupt(header: dict, data: int) -> tuple[dict, int]:
        header["a"].update(fields)
        return header, data + data_extra
    return corrupt


CORRUPT = {
    "negative-data-offsets": _with_a(data_offsets=[-8, 4]),
    "shape-larger-than-its-offsets": _with_a(shape=[2, 3000]),  # 6000 bf16 where the offsets hold 6
    "shape-larger-than-the-file": _with_a(shape=[2, 3000], data_offsets=[16, 16 + 12000]),  # both agree
    "unknown-dtype": _with_a(dtype="F12"),
    "overlapping-tensors": _with_a(data_offsets=[12, 24]),  # its first 4 bytes are b's last
}
# safetensors wants the data section covered exactly; our reader checks bounds and overlaps only.
LAXER = {
    "gap-between-tensors": _with_a(data_extra=4, data_offsets=[20, 32]),
    "trailing-bytes": _with_a(data_extra=8),
}


def test_the_valid_base_file_reads_the_same(tmp_path):
    header, data = _valid_parts(tmp_path)
    path = _write(tmp_path / "copy.safetensors", header, data)
    assert ours(path) == reference(path) == {"a": ("BF16", (2, 3)), "b": ("F32", (4,))}


def _corrupt_file(tmp_path: Path, corrupt) -> Path:
    return _write(tmp_path / "corrupt.safetensors", *corrupt(*_valid_parts(tmp_path)))


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_both_refuse(tmp_path, case):
    path = _corrupt_file(tmp_path, CORRUPT[case])
    with pytest.raises(SafetensorError):
        reference(path)
    with pytest.raises(ModelProbeError):
        read_safetensors_header(path)


@pytest.mark.parametrize("case", sorted(LAXER))
def test_both_refuse_an_incompletely_covered_data_section(tmp_path, case):
    path = _corrupt_file(tmp_path, LAXER[case])
    with pytest.raises(SafetensorError):
        reference(path)
    try:
        read_safetensors_header(path)
    except ModelProbeError:
        return
    raise AssertionError("our reader accepted it")
