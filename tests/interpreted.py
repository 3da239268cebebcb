"""Running a test file's Triton-kernel tests in a fresh process with TRITON_INTERPRET=1 (the CPU
runs the kernels). Triton reads the variable when a @triton.jit function is defined and again in
lazy imports at a launch, so it must be set from the process start: see
tests/test_kernels_exponent_codec.py's `codec` fixture for what mixing modes does."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def run_interpreted(test_file: str, min_passed: int, timeout_s: int = 900) -> None:
    """Run `test_file` under TRITON_INTERPRET=1 in a new pytest process; assert it passed at least
    `min_passed` tests and failed none."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= min_passed and "failed" not in proc.stdout.splitlines()[-1], tail
