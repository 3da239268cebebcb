"""Bounded reads of the files the probes are given (model folders, GPU snapshots).

The probes run inside sglang's startup, before any weight loads: a FIFO or a device named like a
model file must not block it (open() on a FIFO waits for a writer; /dev/zero never ends), and no
file may be read past a cap. Each reader raises the caller's own error type, so the caller's
handling (the CLI's rc 2, the plugin stepping aside) applies unchanged.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

# Configs are kilobytes; the largest sharded-checkpoint index files are a few MB.
MAX_JSON_BYTES = 16 * 1024 * 1024
# Configs, indexes and snapshots nest a few levels; the probes' recursive walks must not meet
# Python's recursion limit on a hostile one.
MAX_JSON_DEPTH = 32


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _nonblocking(path: str, flags: int) -> int:
    # A FIFO swapped in after the stat then opens at once instead of waiting for a writer.
    return os.open(path, flags | os.O_NONBLOCK)


def open_regular(path: str | os.PathLike, error: type[Exception], expected: str) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (symlinks followed); else `error`."""
    try:
        mode = os.stat(path).st_mode  # before opening: opening a FIFO or a device can block
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}); expected {expected}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file ({_kind(mode)}); expected {expected}")
    try:
        f = open(path, "rb", opener=_nonblocking)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}); expected {expected}") from None
    mode = os.fstat(f.fileno()).st_mode
    if not stat.S_ISREG(mode):
        f.close()
        raise error(f"{path}: not a regular file ({_kind(mode)}); expected {expected}")
    return f


def read_json_file(path: str | os.PathLike, error: type[Exception], expected: str,
                   limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON document from a regular file of at most `limit` bytes; any failure is `error`."""
    with open_regular(path, error, expected) as f:
        try:
            raw = f.read(limit + 1)
        except OSError as e:
            raise error(f"{path}: cannot read ({e.strerror or e}); expected {expected}") from None
    if len(raw) > limit:
        raise error(f"{path}: larger than {limit} bytes; expected {expected}")
    data = parse_json(raw, Path(path), error, expected)
    if _depth(data) > MAX_JSON_DEPTH:
        raise error(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels; expected {expected}")
    return data


def _depth(data: Any) -> int:
    deepest, todo = 0, [(data, 1)]
    while todo:  # iterative: the point is not to recurse
        node, level = todo.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            todo.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            todo.extend((v, level + 1) for v in node)
    return deepest


def parse_json(raw: bytes, where: Path | str, error: type[Exception], expected: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply; expected {expected}") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: JSONDecodeError, over-long integers
        raise error(f"{where}: not valid JSON ({e}); expected {expected}") from None
