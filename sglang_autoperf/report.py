"""What a calibration did, in numbers: the log table, and `sglang-autoperf explain`."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from sglang_autoperf.units import gib

if TYPE_CHECKING:
    from sglang_autoperf.cache import StepSummary, TuningKey, TuningResult
    from sglang_autoperf.trace import StepTrace



def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _share(summary: "StepSummary | None") -> str:
    """The monitor's own host time per traced step, and its share of the step."""
    if summary is None or summary.step_ms <= 0:
        return "-"
    return f"{summary.monitor_ms:.2f} ({summary.monitor_ms / summary.step_ms:.1%})"


def format_compile_check(result: "TuningResult") -> str:
    """A torch.compile check: compiled vs eager steps at one shape and what was kept."""
    lines = [f"[autoperf] torch.compile check ({'kept compiled' if result.compiled else 'runs eager'})"]
    for label in ("compiled", "eager"):
        st = result.stats.get(label)
        if st is not None:
            lines.append(f"  {label:9s} median {st.median_ms:.1f} ms/step (min {st.min_ms:.1f}, max {st.max_ms:.1f}, n={st.n})")
    lines.append(f"  check: {result.calibration_s:.1f} s, {result.steps_used} steps")
    if result.compressed_streaming is not None:
        lines.append(_compression_line(result))
    lines.append(f"  reason: {result.reason}")
    return "\n".join(lines)


def _compression_line(result: "TuningResult") -> str:
    """The compressed-vs-raw choice (measure/compressed.py), with the A/B's medians where it measured."""
    ms = result.compression_ms or {}
    measured = (f": {ms['compressed']:.1f} ms compressed vs {ms['raw']:.1f} ms raw a step"
                if {"compressed", "raw"} <= set(ms) else "")
    return f"  compressed layer streaming: {'kept' if result.compressed_streaming else 'not kept'}{measured}"


def format_calibration_table(result: "TuningResult") -> str:
    """Before (baseline) vs after (chosen) per step, the measured trials, VRAM and time spent."""
    if result.compiled is not None:
        return format_compile_check(result)
    b: StepSummary | None = result.before
    a: StepSummary | None = result.after
    chosen, started = result.chosen(), result.started()
    changed = chosen != started
    rows = [
        ("", "before", "after"),
        ("setting", started.label(), chosen.label()),
        ("step ms", _ms(b and b.step_ms), _ms(a and a.step_ms)),
        ("compute ms", _ms(b and b.compute_ms), _ms(a and a.compute_ms)),
        ("copy ms", _ms(b and b.copy_ms), _ms(a and a.copy_ms)),
        ("exposed copy ms", _ms(b and b.exposed_ms), _ms(a and a.exposed_ms)),
        ("peak VRAM in a step", gib(result.baseline_vram_bytes, 2, missing='-'), gib(result.vram_bytes, 2, missing='-')),
        ("monitor's own host ms", _share(b), _share(a)),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"[autoperf] calibration ({result.objective}): "
             f"{'switched to' if changed else 'kept'} {chosen.label()}"]
    for r in rows:
        lines.append(f"  {r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}")
    if result.stats:
        lines.append("  measured step times:")
        for label, s in result.stats.items():
            mark = " <- chosen" if label == chosen.label() else ""
            lines.append(f"    {label}: median {s.median_ms:.1f} ms (min {s.min_ms:.1f}, "
                         f"max {s.max_ms:.1f}, n={s.n}){mark}")
    lines.append(f"  calibration: {result.calibration_s:.1f} s, {result.steps_used} steps")
    if result.memory:
        m = result.memory  # retune/memory.MemoryCorrection, card-wide (other processes included)
        started = result.started().to_dict()  # the reading's placement holds the traced lists only
        at = "the start placement" if all(started.get(k) == p for k, p in m["placement"].items()) \
            else "the first faster candidate"  # measure/live: a second reading there sized the last candidate
        lines.append(f"  memory at {at}: peak {gib(m['measured_peak_bytes'], 2)} measured vs "
                     f"{gib(m['predicted_peak_bytes'], 2)} predicted, limit {gib(m['limit_bytes'], 2)} (card-wide), "
                     f"kept-free margin {gib(m['margin_bytes'], 2)}: candidates placed at most "
                     f"{gib(m['limit_bytes'] - m['margin_bytes'] - m['fixed_bytes'], 2)}")
    if result.compressed_streaming is not None:
        lines.append(_compression_line(result))
    lines.append(f"  reason: {result.reason}")
    return "\n".join(lines)


def _format_key(key: "TuningKey") -> str:
    budget = key.budget or "none"
    if budget.endswith(" bytes"):
        budget = gib(int(budget.split()[0]), 2)
    pinned = key.pinned_placement or "none"
    lora = ",".join(key.lora_adapters) or "none"
    return (f"  key: {key.gpu_name} x{key.gpu_count} ({gib(key.gpu_total_memory_bytes, 2, missing='-')}, {key.link}), "
            f"{key.layout}, model {key.model_fingerprint[:12]}, shape {key.shape_bucket}, batch "
            f"{key.batch_size}, budget {budget}, pinned {pinned}, LoRA {lora}, sglang {key.sglang_version}, "
            f"torch {key.torch_version}, autoperf {key.plugin_version} (cost model {key.cost_model_version})")


def write_timeline_png(step: "StepTrace", path: str, title: str = "") -> None:
    """Two rows per layer list's passes on one time axis: copies on "copy stream", compute (with
    the wait before it hatched) on "compute". Raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: optional dependency
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(12, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#4C72B0", "#55A868", "#C44E52", "#8172B2"]
    y_copy, y_compute, h = 1.0, 0.0, 0.6
    nlayers = sum(len(p.layers) for p in step.passes)
    for pi, p in enumerate(step.passes):
        color = colors[pi % len(colors)]
        for t in p.layers:
            if t.copy_start_ms is not None and t.copy_end_ms is not None:
                ax.broken_barh([(t.copy_start_ms, t.copy_ms)], (y_copy - h / 2, h),
                               facecolors=color, edgecolors="white", linewidth=0.3)
                if nlayers <= 80:
                    ax.text(t.copy_start_ms + t.copy_ms / 2, y_copy, str(t.layer),
                            ha="center", va="center", fontsize=5, color="white")
            if t.stall_ms > 0:
                ax.broken_barh([(t.compute_start_ms - t.stall_ms, t.stall_ms)], (y_compute - h / 2, h),
                               facecolors="none", edgecolors="#C44E52", hatch="///", linewidth=0.3)
            ax.broken_barh([(t.compute_start_ms, t.compute_ms)], (y_compute - h / 2, h),
                           facecolors=color, edgecolors="white", linewidth=0.3)
            if nlayers <= 80:
                ax.text(t.compute_start_ms + t.compute_ms / 2, y_compute, str(t.layer),
                        ha="center", va="center", fontsize=5, color="white")
    ax.set_yticks([y_compute, y_copy], ["compute", "copy stream"])
    ax.set_ylim(-0.6, 2.0)  # room for the legend above the copy row
    ax.set_xlabel("ms from step start")
    ax.set_xlim(left=min([0.0] + [t.copy_start_ms for p in step.passes for t in p.layers
                                  if t.copy_start_ms is not None]))
    ax.legend(handles=[Patch(facecolor="none", edgecolor="#C44E52", hatch="///", label="waiting for copy")]
              + [Patch(color=colors[i % len(colors)], label=f"{p.component}.{p.layer_list} pass {i}")
                 for i, p in enumerate(step.passes)], fontsize=6, loc="upper right", ncol=2)
    ax.set_title(title or f"step {step.step}: {step.placement.label()}, wall {step.wall_ms:.1f} ms, "
                 f"compute {step.compute_ms:.1f} ms, copy {step.copy_ms:.1f} ms, "
                 f"exposed {step.exposed_ms:.1f} ms", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def _pick_step(result: "TuningResult") -> "StepTrace | None":
    """A traced step under the chosen placement (the last one: steady), else the last traced."""
    steps = result.step_traces()
    if not steps:
        return None
    chosen = [s for s in steps if s.placement == result.placement]
    return (chosen or steps)[-1]


# Where tuning results come from: only these two GPU paths call TuningCache.put.
_WHO_WRITES = ("results are written only by GPU runs with layerwise offload (a streamed DiT calibrated "
               "live, SGLANG_AUTOPERF_CALIBRATE on) or a torch.compile check (SGLANG_AUTOPERF_COMPILE=1); "
               "on a CPU nothing is tuned")


def _error(message: str) -> int:
    print(f"sglang-autoperf explain: error: {message}", file=sys.stderr)
    return 2


def _nothing_to_explain(directory, explicit: bool) -> tuple[int, str]:
    """(rc, one line) for a cache with no usable entry: 0 where the cache is merely empty."""
    if directory.exists() and not directory.is_dir():
        return 2, f"{directory} is not a directory; expected the tuning cache directory"
    if not directory.exists():
        if explicit:  # a --cache-dir that names nothing is a typo, not an empty cache
            return 2, f"--cache-dir {directory} does not exist, so there is no calibration there to explain"
        return 0, f"no tuning results in {directory} (it does not exist yet): {_WHO_WRITES}"
    try:
        files = len(list(directory.glob("*.json")))
    except OSError as exc:
        return 2, f"cannot read {directory} ({exc.strerror or exc})"
    if files:
        return 0, (f"no usable tuning results in {directory}: its {files} .json file(s) are damaged or from "
                   f"an older sglang-autoperf (the warnings above say which); {_WHO_WRITES}")
    return 0, f"no tuning results in {directory}: {_WHO_WRITES}"


def _write_png(entry, png: str, json_output: bool) -> int:
    step = _pick_step(entry.result)
    if step is None:
        return _error(f"{entry.path} holds no traced steps; no timeline written")
    try:
        write_timeline_png(step, png)
    except ImportError:
        return _error("--png needs matplotlib (pip install 'sglang-autoperf[plots]' or pip install matplotlib)")
    except OSError as exc:
        return _error(f"could not write {png}: {exc}")
    print(f"timeline of step {step.step} ({step.placement.label()}) written to {png}",
          file=sys.stderr if json_output else sys.stdout)
    return 0


def explain(json_output: bool = False, png: str | None = None, cache_dir: str | None = None) -> int:
    """Print the latest calibration in the tuning cache, or why there is none: 0; 2 for bad input."""
    from pathlib import Path

    from sglang_autoperf.cache import TuningCache

    cache = TuningCache(Path(cache_dir).expanduser() if cache_dir else None)
    entry = cache.latest_entry()
    if entry is None:
        rc, message = _nothing_to_explain(cache.directory, explicit=bool(cache_dir))
        if rc:
            return _error(message)
        if json_output:
            print(json.dumps({"cache_dir": str(cache.directory), "result": None, "why": message}, indent=1))
        else:
            print(message + ("; no timeline written" if png else ""))
        return 0
    if json_output:
        print(json.dumps({"cache_file": str(entry.path), "written_at": entry.written_at,
                          "key": entry.key.to_dict(), "result": entry.result.to_dict()}, indent=1))
    else:
        print(format_calibration_table(entry.result))
        print(_format_key(entry.key))
        print(f"  cache file: {entry.path}")
    return _write_png(entry, png, json_output) if png else 0
