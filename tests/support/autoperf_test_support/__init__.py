"""Test-only sglang plugin, never installed: the sglang processes the tests start find it through
PYTHONPATH (tests/conftest.py, sglang_env) by the dist-info beside this folder.

1. CPU compatibility: the same routing the autoperf plugin applies when it is on
   (sglang_autoperf.sglang_adapter.binding.register_cpu_fallbacks), so runs with the plugin OFF work on
   a CPU machine too. It only acts where the original op raised on CPU tensors.
2. AUTOPERF_TEST_DUMP_DIR: each worker writes the ServerArgs it received to
   <dir>/server_args_rank<N>.json, so tests compare the effective settings of runs.
"""
import dataclasses
import json
import os


def _canonical(value, depth=0):
    """JSON-ready and independent of hash seeds (sets are sorted), so two runs compare equal."""
    if depth > 8:
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name, None), depth + 1) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(repr(_canonical(v, depth + 1)) for v in value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v, depth + 1) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):  # functions: by name, not by address
        return f"<callable {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}>"
    return repr(value)


def _dump_worker_args(result, worker, *args, **kwargs):
    out_dir = os.environ.get("AUTOPERF_TEST_DUMP_DIR")
    if not out_dir:
        return None
    sa = worker.server_args
    fields = {f.name: _canonical(getattr(sa, f.name, None)) for f in dataclasses.fields(sa)}
    fields["__autoperf_plan__"] = getattr(sa, "autoperf_plan", None)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"server_args_rank{getattr(worker, 'rank', 0)}.json")
    with open(path, "w") as f:
        json.dump(fields, f, default=repr, sort_keys=True, indent=1)
    return None


def register():
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry, HookType

    from sglang_autoperf.sglang_adapter.binding import register_cpu_fallbacks
    from sglang_autoperf.sglang_adapter.contract import TARGET_WORKER_INIT

    register_cpu_fallbacks()
    HookRegistry.register(TARGET_WORKER_INIT, _dump_worker_args, HookType.AFTER)
